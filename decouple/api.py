"""The public API: :func:`convert` compiles a model; :class:`DecoupledModel` trains and exports it."""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import codegen
from .balance import Balance, balance_splits
from .balance import check_kind as check_balance
from .errors import ConfigError, DecoupleError, TraceError
from .inputs import normalize_example_inputs
from .ir import Program, StageSpec
from .losses import default_task_loss
from .partition import Partition, partition, resolve_splits
from .passes import get_method, method_options, run_passes
from .report import ParamCounts, StageCounts, count
from .runtime import sequential
from .runtime.pipeline import Pipeline
from .runtime.stats import RunStats
from .runtime.timeline import Timeline
from .stage import Stage
from .trace import Trace, TracerName, propagate, trace

__all__ = ["convert", "DecoupledModel", "TracerFallbackWarning"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class TracerFallbackWarning(UserWarning):
    """``tracer="auto"``: torch.fx could not trace the model, so torch.export was used."""


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def convert(
    model: nn.Module,
    method: str = "scl",
    splits: Sequence[str] | int | None = None,
    example_inputs: Any = None,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    optimizer: OptimizerFactory | None = None,
    devices: Sequence[str | torch.device] | str | torch.device | None = None,
    num_classes: int | None = None,
    tracer: TracerName = "auto",
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    autowrap_functions: Iterable[Callable[..., Any]] = (),
    copy_model: bool = True,
    balance: str = "flops",
    on_nonfinite: str = "raise",
    **options: Any,
) -> DecoupledModel:
    """Compile ``model`` into stages trained with local objectives.

    Args:
        model: any ``nn.Module``; it is never modified (it is deep-copied unless ``copy_model=False``,
            in which case the stages share and train its parameters in place).
        method: "scl" (supervised contrastive heads), "al" (associated learning),
            "early_exit" (exit classifiers) or "bp" (end-to-end backprop baseline).
        splits: module qualified names (or fx node names) to cut right after, in forward order;
            an int ``N`` asks for ``N`` stages balanced by cost.
        example_inputs: a tuple of example positional inputs, or a dict of keyword inputs, used to
            trace the model and size the local heads. Arguments not given are fixed to their defaults.
        loss_fn: ``loss_fn(output, target)`` for the last stage, called with exactly what the model
            returns (default: cross-entropy on a logits tensor).
        optimizer: ``params -> torch.optim.Optimizer``, called once per stage (default Adam, lr 1e-3).
        devices: a device per stage, or fewer devices given to contiguous runs of stages.
        num_classes: needed by "al" and "early_exit" when the output is not ``(batch, classes)``.
        tracer: "auto" (fx, falling back to torch.export), "fx" or "export".
        leaf_modules, autowrap_functions: passed to the fx tracer; leaf modules run as one call.
        balance: with ``splits=N``, what the stages balance, local heads included: "flops" (training
            FLOPs), "params", or "time" (wall time on the example inputs: give a realistic batch).
        on_nonfinite: a stage whose local loss is NaN or infinite "raise"s a ``StageError`` naming
            the stage and batch, or "skip"s that update (counted in ``Stage.skipped_steps``).
        **options: options of the method (e.g. ``temperature``, ``head``, ``pool`` for "scl").
    """
    chosen = get_method(method)
    opts = method_options(chosen, options)
    balance_kind = check_balance(balance)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert() takes an nn.Module, got {type(model).__name__}")
    if optimizer is not None and isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            "optimizer must be a factory, not an optimizer instance: each stage builds its own, e.g. "
            "optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(f"loss_fn must be callable as loss_fn(output, target), got {type(loss_fn).__name__}")
    if on_nonfinite not in ("raise", "skip"):
        raise ConfigError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    args, kwargs = normalize_example_inputs(example_inputs)
    root = copy.deepcopy(model) if copy_model else model

    traces = _trace_both_modes(root, args, kwargs, tracer, leaf_modules, autowrap_functions)
    for tr in {id(t): t for t in traces.values()}.values():
        propagate(tr, tr.inputs.bind(args, kwargs))

    if splits is None:
        raise ConfigError("splits is required: a list of module names to cut after (e.g. ['layer1', 'layer2']) or a number of stages")
    balanced: Balance | None = None
    if isinstance(splits, int) and not isinstance(splits, bool):
        balanced = balance_splits(traces[True], root, splits, kind=balance_kind, method=chosen, options=opts,
                                  loss_fn=loss_fn or default_task_loss, num_classes=num_classes, args=args, kwargs=kwargs)
        names: Sequence[str] = balanced.splits
    else:
        if balance != "flops":
            raise ConfigError(f"balance={balance!r} chooses split points for splits=N; with explicit splits leave it out")
        names = splits  # type: ignore[assignment]
    partitions = {True: _partition(traces[True], names, root)}
    same = traces[False] is traces[True]
    partitions[False] = partitions[True] if same else _partition(traces[False], names, root)

    num_stages = partitions[True].num_stages
    specs = [
        StageSpec(index=k, plans={True: partitions[True].stages[k], False: partitions[False].stages[k]})
        for k in range(num_stages)
    ]
    program = Program(
        method=chosen.name,
        root=root,
        partitions=partitions,
        stages=specs,
        options=opts,
        loss_fn=loss_fn or default_task_loss,
        num_classes=num_classes,
    )
    run_passes(program, chosen, opts)
    placement = _assign_devices(devices, len(program.stages), root, dropped=len(program.dropped))
    for spec, device in zip(program.stages, placement):
        spec.device = device
    stages = codegen.build_stages(program)
    factory = optimizer or _default_optimizer
    for stage in stages:
        stage.optimizer = _make_optimizer(factory, stage)
        stage.on_nonfinite = on_nonfinite
    dm = DecoupledModel(program, stages)
    dm.balance = balanced
    dm.train(model.training)
    return dm


def _trace_both_modes(
    root: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    tracer: TracerName,
    leaf_modules: Iterable[Any],
    autowrap_functions: Iterable[Callable[..., Any]],
) -> dict[bool, Trace]:
    leaf_modules = list(leaf_modules)
    autowrap_functions = list(autowrap_functions)
    if tracer not in ("auto", "fx", "export"):
        raise ConfigError(f"unknown tracer {tracer!r}; use 'auto', 'fx' or 'export'")
    frontend = "fx" if tracer == "auto" else tracer

    def run(training: bool) -> Trace:
        return trace(
            root, args, kwargs, training=training, tracer=frontend,  # type: ignore[arg-type]
            leaf_modules=leaf_modules, autowrap_functions=autowrap_functions,
        )

    try:
        train_trace = run(True)
    except TraceError as exc:
        if tracer != "auto":
            raise
        warnings.warn(
            f"torch.fx could not trace {type(root).__name__} ({str(exc).splitlines()[0][:160]}); "
            "using torch.export instead (pass tracer='export' to skip this attempt)",
            TracerFallbackWarning,
            stacklevel=3,
        )
        frontend = "export"
        train_trace = run(True)
    eval_trace = run(False)
    if eval_trace.graph_module.code == train_trace.graph_module.code:
        eval_trace = train_trace  # no mode-dependent Python: one graph serves both modes
    return {True: train_trace, False: eval_trace}


def _partition(tr: Trace, names: Sequence[str], root: nn.Module) -> Partition:
    return partition(tr, resolve_splits(tr, names, root), root)


def _assign_devices(devices: Any, num_stages: int, root: nn.Module, *, dropped: int = 0) -> list[torch.device]:
    if devices is None:
        first = next(iter(root.parameters()), None)
        return [first.device if first is not None else torch.device("cpu")] * num_stages
    if isinstance(devices, (str, torch.device)):
        devices = [devices]
    try:
        parsed = [torch.device(d) for d in devices]
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"devices must be device names like 'cpu' or 'cuda:0': {exc}") from exc
    if not parsed:
        raise ConfigError("devices is empty; give at least one device, or leave it out")
    if len(parsed) > num_stages:
        why = f" (the method replaces the {dropped} stage(s) after the last split)" if dropped else ""
        raise ConfigError(
            f"{len(parsed)} devices for {num_stages} stages{why}: give at most one device per stage (or add splits)"
        )
    for d in parsed:
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise ConfigError(
                f"device {d} is not available here (CUDA available: {torch.cuda.is_available()}, "
                f"devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0}); use 'cpu' entries to run on CPU"
            )
    return [parsed[k * len(parsed) // num_stages] for k in range(num_stages)]


def _make_optimizer(factory: OptimizerFactory, stage: Stage) -> torch.optim.Optimizer | None:
    params = [p for p in stage.parameters() if p.requires_grad]
    if not params:
        return None
    try:
        opt = factory(params)
    except Exception as exc:
        raise ConfigError(
            f"the optimizer factory failed for stage {stage.index}: {type(exc).__name__}: {exc}. It is called as "
            "optimizer(params); e.g. optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
        ) from exc
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError(f"the optimizer factory returned {type(opt).__name__}, expected a torch.optim.Optimizer")
    return opt


class DecoupledModel(nn.Module):
    """A model compiled into stages, each trained by its own local objective and optimizer.

    ``stages[k].module`` is the generated component (``print(dm.stages[0].module.code)``),
    ``stages[k].objective`` its local head and loss, ``stages[k].optimizer`` its optimizer.
    """

    def __init__(self, program: Program, stages: list[Stage]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.method = program.method
        self.__dict__["program"] = program  # holds the model copy; not a submodule of its own
        self.steps = 0
        self.balance: Balance | None = None  # how splits=N chose the splits (shares per stage)

    # -- inputs -----------------------------------------------------------------------------
    def _message(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
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
        losses = sequential.train_step(
            list(self.stages), self._message(args, kwargs), target, end_to_end=self.end_to_end, batch=self.steps  # type: ignore[arg-type]
        )
        self.steps += 1
        return {f"stage{k}": float(loss) for k, loss in enumerate(losses) if loss is not None}

    def local_losses(self, *args: Any, target: Any, **kwargs: Any) -> list[torch.Tensor]:
        """Each stage's local loss with its autograd graph; no backward, no step.

        For "bp" this is the single end-to-end loss.
        """
        results = sequential.forward_stages(list(self.stages), self._message(args, kwargs), target)  # type: ignore[arg-type]
        return [r.result.loss for r in results if r.result is not None]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model through its stages (on their devices) in the current mode.

        Returns what the inference path returns: the model's output, or for associated learning
        the decoded prediction.
        """
        results = sequential.forward_stages(list(self.stages), self._message(args, kwargs), None, objectives=False)  # type: ignore[arg-type]
        program = self.program
        if program.default_exit is None:
            return results[-1].output
        return self._run_tail(program.tails[program.default_exit], results[program.default_exit - 1])

    @staticmethod
    def _run_tail(tail: Any, last: Any) -> Any:
        value = last.output
        for i, (_, module) in enumerate(tail.modules):
            device = next((p.device for p in module.parameters()), None)
            if device is not None:
                value = sequential.move(value, device)
            if i == 0 and tail.extras:
                extras = {k: sequential.move(last.message[v], device) for k, v in tail.extras.items()}
                value = module(value, **extras)
            else:
                value = module(value)
        return value

    # -- export -----------------------------------------------------------------------------
    def _live_inference_module(self, exit: int | None = None) -> fx.GraphModule:
        return codegen.build_inference_module(self.program, list(self.stages), exit)  # type: ignore[arg-type]

    def inference_module(
        self,
        *,
        exit: int | None = None,
        exit_threshold: float | None = None,
        device: str | torch.device | None = None,
    ) -> nn.Module:
        """An independent eval-mode module holding only effective parameters.

        By default an ``fx.GraphModule`` whose ``forward`` takes the original model's inputs and
        returns what the original returns (for "al": the decoded prediction, Algorithm 3).
        ``exit=l`` stops after stage ``l``: associated learning's forward shortcut through
        ``b_l`` and ``h_l .. h_1``, or early exit ``l``'s classifier. ``exit_threshold=p``
        ("early_exit"): a module that answers each sample from the first exit whose softmax
        confidence is at least ``p`` (see :class:`decouple.exits.EarlyExitModel`, whose
        ``usage`` reports the share of samples per exit). ``device`` defaults to the first stage's.
        """
        if exit is not None and exit_threshold is not None:
            raise ConfigError("pass either exit= or exit_threshold=, not both")
        target = device if device is not None else self.stages[0].device  # type: ignore[union-attr]
        if exit_threshold is not None:
            return codegen.snapshot(self._live_exit_model(exit_threshold), target)  # type: ignore[arg-type]
        if exit is not None:
            self._check_exit(exit)
        return codegen.snapshot(self._live_inference_module(exit), target)

    def _live_exit_model(self, threshold: float) -> nn.Module:
        from .exits import EarlyExitModel, batch_major

        if self.method != "early_exit":
            raise ConfigError(
                f"exit_threshold needs exit classifiers, which method 'early_exit' trains; this model uses {self.method!r}"
            )
        stages = list(self.stages)
        ios = [s.io[False] for s in stages]  # type: ignore[union-attr]
        inputs = self.program.partitions[False].trace.inputs
        example = next(
            (shape[0][0] for name, shape in ios[0].shapes.items() if name in ios[0].inputs and isinstance(shape, tuple) and shape and isinstance(shape[0], tuple) and shape[0]),
            None,
        )
        exits = [self.program.tails[k + 1].modules[0][1] for k in range(len(stages) - 1)]
        extras = [s.objective_extras for s in stages[:-1]]  # type: ignore[union-attr]
        subset = example is not None and batch_major(ios[:-1], example)
        return EarlyExitModel([s.eval_module for s in stages], ios, exits, extras, inputs, threshold, subset)  # type: ignore[union-attr]

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
            current.update(stage.module.state_dict())  # type: ignore[union-attr]
        reference = self.program.root.state_dict()
        result = OrderedDict((key, current.get(key, value)) for key, value in reference.items())
        # the per-module versions that _load_from_state_dict reads (e.g. torchvision's MNASNet insists on one)
        result._metadata = getattr(reference, "_metadata", None)  # type: ignore[attr-defined]
        return result

    def param_counts(self, *, exit_threshold: float | None = None) -> ParamCounts:
        """Effective and affiliated parameter counts per stage, and training / inference totals.

        With ``exit_threshold`` ("early_exit"), the exit classifiers count as effective: they run
        at inference.
        """
        live: nn.Module = self._live_exit_model(exit_threshold) if exit_threshold is not None else self._live_inference_module()
        inference_ids = {id(p) for p in live.parameters()}
        rows = []
        for stage in self.stages:
            own = list(stage.module.parameters())  # type: ignore[union-attr]
            extra = list(stage.affiliated_parameters())  # type: ignore[union-attr]
            kept = [p for p in extra if id(p) in inference_ids]
            dropped = [p for p in extra if id(p) not in inference_ids]
            plan = self.program.stages[stage.index].plan  # type: ignore[union-attr]
            share = self.balance.shares[stage.index] if self.balance is not None else None  # type: ignore[union-attr]
            rows.append(StageCounts(stage.index, plan.modules, count(own + kept), count(dropped), str(stage.device), share))  # type: ignore[union-attr]
        dropped_params = 0
        for plan in self.program.dropped:
            dropped_params += _plan_parameter_count(self.program, plan)
        notes = list(self.program.notes) + ([self.balance.describe()] if self.balance is not None else [])
        used = {id(p) for stage in self.stages for p in stage.module.parameters()}  # type: ignore[union-attr]
        unused = [n for n, p in self.program.root.named_parameters() if id(p) not in used]
        if unused and not self.program.dropped:
            shown = ", ".join(unused[:4]) + (", ..." if len(unused) > 4 else "")
            notes.append(f"{count(p for n, p in self.program.root.named_parameters() if n in unused):,} parameters "
                         f"never run in forward and are not in the inference module ({shown})")
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
            io = stage.io[True]  # type: ignore[union-attr]
            h.update(repr((io.inputs, io.outputs, io.message_out)).encode())
            for name, p in stage.named_parameters():
                h.update(f"{name}:{tuple(p.shape)}".encode())
        return h.hexdigest()[:16]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The whole training state: stage modules, objectives, optimizers, step count."""
        if args or kwargs:
            return super().state_dict(*args, **kwargs)
        return {
            "format": "decouple/1",
            "method": self.method,
            "fingerprint": self.fingerprint(),
            "steps": self.steps,
            "stages": [
                {
                    "module": stage.module.state_dict(),  # type: ignore[union-attr]
                    "objective": stage.objective.state_dict() if stage.objective is not None else {},  # type: ignore[union-attr]
                    "optimizer": stage.optimizer.state_dict() if stage.optimizer is not None else None,  # type: ignore[union-attr]
                }
                for stage in self.stages
            ],
        }

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        """Restore a state from :meth:`state_dict`, checking it was saved by the same conversion."""
        if state_dict.get("format") != "decouple/1":
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        if state_dict["method"] != self.method or state_dict["fingerprint"] != self.fingerprint():
            raise DecoupleError(
                f"this state was saved from a different conversion (method {state_dict['method']!r}, fingerprint "
                f"{state_dict['fingerprint']}; this model: {self.method!r}, {self.fingerprint()}); convert the model "
                "with the same method, splits and options before loading"
            )
        for stage, saved in zip(self.stages, state_dict["stages"]):
            stage.module.load_state_dict(saved["module"], strict=strict)  # type: ignore[union-attr]
            if stage.objective is not None:  # type: ignore[union-attr]
                stage.objective.load_state_dict(saved["objective"], strict=strict)  # type: ignore[union-attr]
            if stage.optimizer is not None and saved["optimizer"] is not None:  # type: ignore[union-attr]
                stage.optimizer.load_state_dict(saved["optimizer"])  # type: ignore[union-attr]
        self.steps = int(state_dict["steps"])
        return None

    def extra_repr(self) -> str:
        return f"method={self.method!r}, stages={self.num_stages}"

    # -- pipelined training -----------------------------------------------------------------
    def pipeline(self, *, depth: int = 2, record: bool = False) -> Pipeline:
        """A cross-batch pipeline over the stages: one worker thread per stage (see ``runtime/pipeline.py``).

        ``with dm.pipeline() as pipe: pipe.submit(x, target=y); ...; stats = pipe.drain()``.
        ``submit`` returns once stage 0 has room; ``depth`` is how many batches each stage's queue
        holds (activations in flight); ``record=True`` records a timeline (:meth:`timeline`).
        Training equals ``train_step`` on the same batches in the same order.
        """
        if self.end_to_end:
            raise ConfigError(
                f"method {self.method!r} backpropagates end to end, so its stages cannot train on different batches "
                "at once; use train_step() or fit() (which trains it sequentially), or convert with a decoupled method"
            )
        return Pipeline(list(self.stages), bind=self._message, depth=depth, record=record, on_sync=self._pipeline_sync)  # type: ignore[arg-type]

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
        backend: str = "threads",
    ) -> Any:
        """Train for ``epochs`` passes over ``loader``; returns one :class:`RunStats` per epoch.

        Batches are ``(x, y)``, ``(*inputs, y)`` or dicts of keyword inputs with the target under
        ``"target"`` (or ``"labels"``, ``"label"``, ``"y"``). Decoupled methods train through
        :meth:`pipeline` unless ``pipelined=False``; ``bp`` trains sequentially. A progress bar per
        epoch shows per-stage losses and the last stage's accuracy on logits.
        ``on_epoch_end(epoch, stats)`` runs after each epoch with no batch in flight.

        ``backend="processes"`` trains with one process per stage on this machine instead of one
        thread per stage (the way past Python's GIL; see :func:`decouple.distributed.fit_processes`)
        and returns its :class:`decouple.distributed.History`; the trained state is loaded back here.
        """
        if backend == "processes":
            from .distributed import fit_processes

            return fit_processes(self, loader, epochs)
        if backend != "threads":
            raise ConfigError(f"backend must be 'threads' or 'processes', got {backend!r}")
        from .fit import fit

        return fit(self, loader, epochs, pipelined=pipelined, progress=progress, on_epoch_end=on_epoch_end,
                   depth=depth, record=record)

    def timeline(self) -> Timeline:
        """The events of the last pipeline run with ``record=True``; ``.render_png(path)`` draws them."""
        timeline = getattr(self, "_timeline", None)
        if timeline is None:
            raise ConfigError("no timeline recorded yet: train with dm.fit(loader, record=True) or dm.pipeline(record=True)")
        return timeline


def _plan_parameter_count(program: Program, plan: Any) -> int:
    from .partition import _parameters_read

    part = program.partitions[True]
    nodes = {n.name: n for n in part.trace.graph.nodes}
    params = [p for x in plan.nodes for _, p in _parameters_read(nodes[x], program.root)]
    return count(params)
