"""The compiled model: :class:`DecoupledModel` trains its stages and hands back the inference model and weights."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, overload

import torch
import torch.fx as fx
from torch import nn

from .codegen.early_exit_model import EarlyExitModel, batch_major
from .codegen.inference import build_inference_module, snapshot
from .codegen.stage import Stage, StageList, StageResult
from .compiler.cuts import Balance
from .compiler.graph_view import parameters_read
from .compiler.partition import StagePlan
from .compiler.program import InferenceTail, Program
from .errors import ConfigError
from .param_counts import ParamCounts, StageCounts, count
from .runtime import sequential
from .runtime.backward_gate import BackwardSlots
from .runtime.callbacks import Callback
from .runtime.config import TrainingConfig
from .runtime.pipeline import Pipeline
from .runtime.state import MODEL_FORMATS, load_model_state, model_state
from .runtime.stats import RunStats
from .runtime.step import end_epoch
from .runtime.timeline import Timeline
from .tree import move_tree

if TYPE_CHECKING:
    from .runtime.distributed.trainer import History

__all__ = ["DecoupledModel"]


class DecoupledModel(nn.Module):
    """A model compiled into stages, each trained by its own local objective and optimizer.

    ``stages[k].module`` is the generated component (``print(dm.stages[0].module.code)``),
    ``stages[k].objective`` its local head and loss, ``stages[k].optimizer`` its optimizer.
    """

    stages: StageList
    program: Program  # holds the model copy; kept out of the module tree (not a submodule of its own)

    def __init__(self, program: Program, stages: list[Stage]) -> None:
        super().__init__()
        self.stages = StageList(stages)
        self.method = program.method
        self.__dict__["program"] = program
        self.steps = 0
        #: how the stages train beyond their optimizers: precision, schedules, clipping, accumulation, compile
        self.training_config = TrainingConfig()
        self.balance: Balance | None = None  # how splits=N chose the splits (shares per stage)
        self._timeline: Timeline | None = None

    # -- inputs -----------------------------------------------------------------------------
    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The first stage's message for a call with these inputs, checked against the traced signature."""
        inputs = self.program.partitions[self.training].trace.inputs
        return inputs.bind(args, kwargs)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def end_to_end(self) -> bool:
        return self.program.end_to_end

    # -- training ---------------------------------------------------------------------------
    def train_step(self, *args: Any, target: Any, **kwargs: Any) -> dict[str, float]:
        """One local forward, backward and optimizer step per stage on one batch.

        Returns ``{"stage0": loss, ...}`` for the stages with an objective (for "bp", the last).
        """
        losses = sequential.train_step(list(self.stages), self.bind(args, kwargs), target,
                                       config=self.training_config, end_to_end=self.end_to_end, batch=self.steps)  # fmt: skip
        self.steps += 1
        return {f"stage{k}": float(loss) for k, loss in enumerate(losses) if loss is not None}

    def end_epoch(self) -> None:
        """Close an epoch of :meth:`train_step` calls: step each stage's last partial accumulation group and
        the per-epoch schedulers (``fit`` does this after every epoch)."""
        end_epoch(list(self.stages), self.training_config, end_to_end=self.end_to_end)

    def local_losses(self, *args: Any, target: Any, **kwargs: Any) -> list[torch.Tensor]:
        """Each stage's local loss with its autograd graph; no backward, no step.

        For "bp" this is the single end-to-end loss.
        """
        results = sequential.forward_stages(
            list(self.stages), self.bind(args, kwargs), target, config=self.training_config
        )
        return [r.result.loss for r in results if r.result is not None]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model through its stages (on their devices) in the current mode.

        Returns what the inference path returns: the model's output, or for associated learning
        the decoded prediction.
        """
        results = sequential.forward_stages(list(self.stages), self.bind(args, kwargs), None, objectives=False)
        program = self.program
        if program.default_exit is None:
            return results[-1].output
        return self._run_tail(program.tails[program.default_exit], results[program.default_exit - 1])

    @staticmethod
    def _run_tail(tail: InferenceTail, last: StageResult) -> Any:
        value = last.output
        for i, (_, module) in enumerate(tail.modules):
            device = next((p.device for p in module.parameters()), None)
            if device is not None:
                value = move_tree(value, device)
            if i == 0 and tail.extras:
                extras = {
                    k: last.message[v] if device is None else move_tree(last.message[v], device)
                    for k, v in tail.extras.items()
                }
                value = module(value, **extras)
            else:
                value = module(value)
        return value

    # -- export -----------------------------------------------------------------------------
    def _live_inference_module(self, exit: int | None = None) -> fx.GraphModule:
        return build_inference_module(self.program, list(self.stages), exit)

    @overload
    def inference_module(
        self, *, exit: int | None = None, exit_threshold: None = None, device: str | torch.device | None = None
    ) -> fx.GraphModule: ...

    @overload
    def inference_module(
        self, *, exit: None = None, exit_threshold: float, device: str | torch.device | None = None
    ) -> EarlyExitModel: ...

    def inference_module(
        self,
        *,
        exit: int | None = None,
        exit_threshold: float | None = None,
        device: str | torch.device | None = None,
    ) -> fx.GraphModule | EarlyExitModel:
        """An independent eval-mode module holding only effective parameters.

        By default an ``fx.GraphModule`` whose ``forward`` takes the original model's inputs and
        returns what the original returns (for "al": the decoded prediction, Algorithm 3).
        ``exit=l`` stops after stage ``l``: associated learning's forward shortcut through
        ``b_l`` and ``h_l .. h_1``, or exit ``l``'s classifier (any method whose objectives have an
        exit head: early_exit, dgl, predsim, infopro). ``exit_threshold=p``: a module that answers each sample from the first exit whose softmax
        confidence is at least ``p`` (see :class:`decouple.codegen.early_exit_model.EarlyExitModel`, whose
        ``usage`` reports the share of samples per exit). ``device`` defaults to the first stage's.
        """
        if exit is not None and exit_threshold is not None:
            raise ConfigError("pass either exit= or exit_threshold=, not both")
        target = device if device is not None else self.stages[0].device
        if exit_threshold is not None:
            return snapshot(self._live_exit_model(exit_threshold), target)
        if exit is not None:
            self._check_exit(exit)
        return snapshot(self._live_inference_module(exit), target)

    @property
    def exits(self) -> list[int]:
        """The early exits ``inference_module(exit=l)`` answers from, besides the default inference path."""
        return [k for k in sorted(self.program.tails) if k != self.program.default_exit]

    def task_loss(self, output: Any, target: Any) -> torch.Tensor:
        """The conversion's ``loss_fn`` (default cross-entropy) on what the model returns."""
        return self.program.loss_fn(output, target)

    def _live_exit_model(self, threshold: float) -> EarlyExitModel:
        stages = list(self.stages)
        tails = self.program.tails
        if self.program.default_exit is not None or any(k + 1 not in tails for k in range(len(stages) - 1)):
            raise ConfigError(
                "exit_threshold needs exit classifiers on every stage but the last (methods early_exit, dgl, predsim "
                f"and infopro train them) and the model's own head; this model uses {self.method!r}"
            )
        ios = [s.io[False] for s in stages]
        inputs = self.program.partitions[False].trace.inputs
        example = next(
            (
                shape[0][0]
                for name, shape in ios[0].shapes.items()
                if name in ios[0].inputs
                and isinstance(shape, tuple)
                and shape
                and isinstance(shape[0], tuple)
                and shape[0]
            ),
            None,
        )
        exits = [tails[k + 1].modules[0][1] for k in range(len(stages) - 1)]
        extras = [tails[k + 1].extras for k in range(len(stages) - 1)]
        subset = example is not None and batch_major(ios[:-1], example)
        return EarlyExitModel([s.eval_module for s in stages], ios, exits, extras, inputs, threshold, subset)

    def _check_exit(self, exit: int) -> None:
        valid = sorted(self.program.tails)
        if not valid:
            raise ConfigError(f"method {self.method!r} has no early exits; call inference_module() without exit=")
        if exit not in valid:
            raise ConfigError(f"exit={exit!r} is not an exit of this model; valid exits are {valid}")

    def effective_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights under the original model's keys; loads into its class with ``strict=True``.

        For "al", whose inference path replaces the model's head, this is the inference module's
        state dict instead.
        """
        if self.program.dropped:
            return self._live_inference_module().state_dict()
        current: dict[str, torch.Tensor] = {}
        for stage in self.stages:
            current.update(stage.module.state_dict())
        reference = self.program.root.state_dict()
        result = OrderedDict((key, current.get(key, value)) for key, value in reference.items())
        # the per-module versions that _load_from_state_dict reads (e.g. torchvision's MNASNet insists on one)
        result._metadata = getattr(reference, "_metadata", None)  # type: ignore[attr-defined]
        return result

    def param_counts(self, *, exit_threshold: float | None = None) -> ParamCounts:
        """Effective and affiliated parameter counts per stage, and training / inference totals.

        With ``exit_threshold``, the exit classifiers count as effective: they run at inference.
        """
        live: nn.Module = (
            self._live_exit_model(exit_threshold) if exit_threshold is not None else self._live_inference_module()
        )
        inference_ids = {id(p) for p in live.parameters()}
        rows = []
        for stage in self.stages:
            own = list(stage.module.parameters())
            extra = list(stage.affiliated_parameters())
            kept = [p for p in extra if id(p) in inference_ids]
            dropped = [p for p in extra if id(p) not in inference_ids]
            plan = self.program.stages[stage.index].plan
            share = self.balance.shares[stage.index] if self.balance is not None else None
            rows.append(
                StageCounts(stage.index, plan.modules, count(own + kept), count(dropped), str(stage.device), share)
            )
        dropped_params = 0
        for plan in self.program.dropped:
            dropped_params += _plan_parameter_count(self.program, plan)
        notes = list(self.program.notes) + ([self.balance.describe()] if self.balance is not None else [])
        used = {id(p) for stage in self.stages for p in stage.module.parameters()}
        unused = [n for n, p in self.program.root.named_parameters() if id(p) not in used]
        if unused and not self.program.dropped:
            shown = ", ".join(unused[:4]) + (", ..." if len(unused) > 4 else "")
            notes.append(
                f"{count(p for n, p in self.program.root.named_parameters() if n in unused):,} parameters "
                f"never run in forward and are not in the inference module ({shown})"
            )
        return ParamCounts(
            method=self.method,
            stages=rows,
            original=count(self.program.root.parameters()),
            inference=count(live.parameters()),
            dropped=dropped_params,
            notes=notes,
        )

    # -- state ------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A hash of the partition (method, stage boundaries, parameter shapes) for compatibility checks."""
        h = hashlib.sha256(self.method.encode())
        for stage in self.stages:
            io = stage.io[True]
            h.update(repr((io.inputs, io.outputs, io.message_out)).encode())
            for name, p in stage.named_parameters():
                h.update(f"{name}:{tuple(p.shape)}".encode())
        return h.hexdigest()[:16]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The whole training state: stage modules, objectives, optimizers, step count (``runtime/state.py``)."""
        if args or kwargs:
            return super().state_dict(*args, **kwargs)
        return model_state(self)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Restore a state from :meth:`state_dict`, checking it was saved by the same conversion."""
        if not isinstance(state_dict, dict) or state_dict.get("format") not in MODEL_FORMATS:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        load_model_state(self, state_dict, strict=strict)
        return None

    def extra_repr(self) -> str:
        return f"method={self.method!r}, stages={self.num_stages}"

    # -- pipelined training -----------------------------------------------------------------
    def pipeline(self, *, depth: int = 2, record: bool = False, backward_slots: BackwardSlots = "auto") -> Pipeline:
        """A cross-batch pipeline over the stages: one worker thread per stage (see ``runtime/pipeline.py``).

        ``with dm.pipeline() as pipe: pipe.submit(x, target=y); ...; stats = pipe.drain()``.
        ``submit`` returns once stage 0 has room; ``depth`` is how many batches each stage's queue
        holds (activations in flight); ``record=True`` records a timeline (:meth:`timeline`);
        ``backward_slots=k`` lets at most ``k`` stages of one device run their backward pass at once
        (lower peak memory, less overlap on that device; ``None``: no limit; default ``"auto"``: two per
        CPU, no limit on GPUs). Training equals ``train_step`` on the same batches
        in the same order, whatever the depth and slots.
        """
        if self.end_to_end:
            raise ConfigError(
                f"method {self.method!r} backpropagates end to end, so its stages cannot train on different batches "
                "at once; use train_step() or fit() (which trains it sequentially), or convert with a decoupled method"
            )
        return Pipeline(list(self.stages), bind=self.bind, depth=depth, record=record, on_sync=self._pipeline_sync,
                        config=self.training_config, backward_slots=backward_slots)  # fmt: skip

    def _pipeline_sync(self, batches: int, timeline: Timeline | None) -> None:
        self.steps += batches
        if timeline is not None:
            self._timeline = timeline

    def fit(
        self,
        loader: Iterable[Any],
        epochs: int = 1,
        *,
        pipelined: bool = True,
        progress: bool = True,
        on_epoch_end: Callable[[int, RunStats], Any] | None = None,
        depth: int = 2,
        record: bool = False,
        backward_slots: BackwardSlots = "auto",
        backend: str = "threads",
        replicas: int = 1,
        validation: Iterable[Any] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        callbacks: Iterable[Callback] | Callback | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        keep_checkpoints: int = 2,
    ) -> list[RunStats] | History:
        """Train until ``epochs`` passes over ``loader``; returns one :class:`RunStats` per epoch.

        Batches are ``(x, y)``, ``(*inputs, y)`` or dicts of keyword inputs with the target under
        ``"target"`` (or ``"labels"``, ``"label"``, ``"y"``). Decoupled methods train through
        :meth:`pipeline` (``depth``, ``record``, ``backward_slots``) unless ``pipelined=False``; ``bp`` trains
        sequentially. A progress bar per
        epoch shows per-stage losses, accuracy, learning rate and validation accuracy.
        ``validation``: a loader evaluated after each epoch on the inference path (``stats.validation``).
        ``log_dir``: CSV files (and TensorBoard events when installed). ``callbacks``:
        :class:`decouple.Callback` objects (``on_epoch_end(epoch, stats)`` is a shortcut).
        ``checkpoint_dir``: the whole training state after each epoch, atomically, the newest
        ``keep_checkpoints`` kept; ``resume=True`` continues from the newest one (``epochs`` is the
        total). See ``decouple/runtime/fit.py``.

        ``backend="processes"`` trains with one process per stage on this machine instead of one
        thread per stage (the way past Python's GIL; see :func:`decouple.distributed.fit_processes`)
        and returns its :class:`decouple.distributed.History`; the trained state is loaded back here.
        ``replicas=R`` (processes only) runs ``R`` data-parallel copies of every stage, each on ``1 / R``
        of every batch, averaging their gradients.
        """
        if backend == "processes":
            from .runtime.distributed.processes import fit_processes

            if any(v is not None for v in (validation, log_dir, callbacks, checkpoint_dir)) or resume:
                raise ConfigError("backend='processes' trains without validation, logs, callbacks or checkpoints; use "
                                  "decouple.distributed.StageTrainer(dm).fit(...) under launch() or torchrun for those")  # fmt: skip
            return fit_processes(self, loader, epochs, replicas=replicas)
        if backend != "threads":
            raise ConfigError(f"backend must be 'threads' or 'processes', got {backend!r}")
        if replicas != 1:
            raise ConfigError(f"replicas={replicas!r} needs a process per stage and replica: train with "
                              f"dm.fit(loader, epochs, backend='processes', replicas={replicas!r})")  # fmt: skip
        from .runtime.fit import fit

        return fit(self, loader, epochs, pipelined=pipelined, progress=progress, on_epoch_end=on_epoch_end,
                   depth=depth, record=record, backward_slots=backward_slots, validation=validation, log_dir=log_dir, callbacks=callbacks,
                   checkpoint_dir=checkpoint_dir, resume=resume, keep_checkpoints=keep_checkpoints)  # fmt: skip

    def timeline(self) -> Timeline:
        """The events of the last pipeline run with ``record=True``; ``.render_png(path)`` draws them."""
        timeline = self._timeline
        if timeline is None:
            raise ConfigError(
                "no timeline recorded yet: train with dm.fit(loader, record=True) or dm.pipeline(record=True)"
            )
        return timeline


def _plan_parameter_count(program: Program, plan: StagePlan) -> int:
    nodes = program.partitions[True].trace.nodes
    params = [p for x in plan.nodes for _, p in parameters_read(nodes[x], program.root)]
    return count(params)
