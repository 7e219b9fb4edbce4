"""A stage of a decoupled model: its generated component module, local objective, optimizer and scheduler.

A stage reads a *message* (``{value name: value}``: the values crossing the cut before it) and
produces the next message. Its generated module exists once per training mode when tracing
froze mode-dependent Python (functional dropout, stochastic depth); both share the same
parameters and buffers, and ``Stage.training`` picks which one runs. How a stage steps (precision,
accumulation, clipping, schedules) is the runtime's: ``decouple/runtime/step.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast, overload

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError
from ..objectives.base import LocalObjective, LocalResult
from ..tree import detach_tree

__all__ = ["Stage", "StageIO", "StageResult", "StageList"]


@dataclass
class StageIO:
    """What a stage exchanges in one training mode.

    ``inputs``: message values its module reads, in argument order. ``outputs``: values its
    module returns (a dict), all in ``message_out``. ``message_out``: the message it hands on
    (its outputs plus values carried through it). ``shapes``: example shape per value name.
    ``crossing``: at a multi-tensor cut, the other message values its head reads beside the
    representation (the stage's output is then the tuple of them all).
    """

    inputs: list[str]
    outputs: list[str]
    message_out: list[str]
    representation: str | None
    last: bool
    shapes: dict[str, Any] = field(default_factory=dict)
    crossing: list[str] = field(default_factory=list)

    def head_input(self, message: dict[str, Any], produced: dict[str, Any]) -> Any:
        """What the local head reads: the representation, or at a multi-tensor cut ``(representation,
        *crossing)``; values the stage did not produce are detached (no gradient reaches another stage)."""
        assert self.representation is not None, "a stage before the last has a representation"
        if not self.crossing:
            return produced[self.representation] if self.representation in produced else message[self.representation]
        return tuple(
            produced[name] if name in produced else detach_tree(message[name])
            for name in [self.representation, *self.crossing]
        )


@dataclass
class StageResult:
    """One stage's work on one batch: the message it hands on and its objective's result."""

    message: dict[str, Any]
    output: Any  # the model's output (last stage) or the representation
    result: LocalResult | None


class Stage(nn.Module):
    """One component: ``module`` (effective parameters), ``objective`` (affiliated), ``optimizer``."""

    module: fx.GraphModule
    objective: LocalObjective | None
    #: the eval-mode module: shares every parameter and buffer with ``module``, so it is kept out of
    #: the module tree (parameters and state dicts list them once)
    eval_module: fx.GraphModule

    def __init__(
        self,
        index: int,
        module: fx.GraphModule,
        eval_module: fx.GraphModule,
        objective: LocalObjective | None,
        io: dict[bool, StageIO],
        device: torch.device,
        objective_extras: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.index = index
        self.module = module
        self.objective = objective
        self.__dict__["eval_module"] = eval_module
        self.io = io
        self.device = torch.device(device)
        self.objective_extras = dict(objective_extras or {})
        self.optimizer: torch.optim.Optimizer | None = None
        #: the learning-rate scheduler of ``optimizer`` (``convert(scheduler=...)``), or None
        self.scheduler: Any = None
        #: the fp16 gradient scaler of this stage (``convert(precision="fp16")``), or None
        self.scaler: torch.amp.GradScaler | None = None
        #: batches whose gradients are summed since this stage's last optimizer step (``accumulate``)
        self.accumulated = 0
        #: what a non-finite local loss does: "raise" a StageError, or "skip" this stage's update
        self.on_nonfinite = "raise"
        self.skipped_steps = 0
        #: what runs in training mode instead of ``module`` / ``objective``: torch.compile'd callables the
        #: runtime sets (``convert(compile=True)``); plain callables, not submodules, so state dicts stay as they are
        self.compiled_module: Callable[..., Any] | None = None
        self.compiled_objective: Callable[..., Any] | None = None

    # -- parameters -------------------------------------------------------------------------
    @property
    def head(self) -> LocalObjective | None:
        """The local head: the objective module holding the stage's affiliated parameters."""
        return self.objective

    def effective_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the component itself: those the inference module keeps."""
        return self.module.parameters()

    def affiliated_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters used only to train: local heads, bridges, autoencoders, exit classifiers."""
        if self.objective is None:
            return iter(())
        return self.objective.parameters()

    def train(self, mode: bool = True) -> Stage:
        super().train(mode)
        if self.eval_module is not self.module:
            self.eval_module.train(mode)
        return self

    @property
    def current_io(self) -> StageIO:
        return self.io[self.training]

    @property
    def graph_module(self) -> fx.GraphModule:
        """The generated module that runs in the current mode."""
        return self.module if self.training else self.eval_module

    # -- running ----------------------------------------------------------------------------
    def forward(self, message: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Run the component on ``message``; return the next message and the stage's output.

        The output is the representation the local head reads or, for the last stage, what the
        model returns.
        """
        io = self.current_io
        compiled = self.compiled_module if self.training else None
        out = (compiled or self.graph_module)(*[message[name] for name in io.inputs])
        if io.last:
            return {}, out
        produced: dict[str, Any] = out
        next_message = {name: produced[name] if name in produced else message[name] for name in io.message_out}
        return next_message, io.head_input(message, produced)  # partition: the stage computes the representation

    def objective_kwargs(self, message: dict[str, Any], next_message: dict[str, Any]) -> dict[str, Any]:
        """Extra inputs of the objective (e.g. an attention mask) looked up in the messages."""
        return {k: next_message.get(v, message.get(v)) for k, v in self.objective_extras.items()}

    def run(self, message: dict[str, Any], carry: Any, *, with_objective: bool = True) -> StageResult:
        """Forward the component and, if it has one, its local objective."""
        next_message, output = self(message)
        result = None
        if with_objective:
            result = self.evaluate(message, next_message, output, carry)
        return StageResult(next_message, output, result)

    def evaluate(
        self, message: dict[str, Any], next_message: dict[str, Any], output: Any, carry: Any
    ) -> LocalResult | None:
        """The local objective on the stage's output (``None`` for a stage without one)."""
        if self.objective is None:
            return None
        compiled = self.compiled_objective if self.training else None
        objective = compiled or self.objective
        result = objective(output, carry, **self.objective_kwargs(message, next_message))
        if not isinstance(result, LocalResult):
            raise ConfigError(
                f"stage {self.index}'s objective {type(self.objective).__name__} returned {type(result).__name__}; its "
                "forward must return decouple.LocalResult(loss, carry) (loss a scalar tensor, carry for the next stage)"
            )
        return result

    def extra_repr(self) -> str:
        return f"index={self.index}, device={self.device}"


class StageList(nn.ModuleList):
    """The stages of a model, in order: an ``nn.ModuleList`` whose items are typed as :class:`Stage`."""

    def __init__(self, stages: Iterable[Stage] = ()) -> None:
        super().__init__(stages)

    @overload
    def __getitem__(self, idx: slice) -> StageList: ...

    @overload
    def __getitem__(self, idx: int) -> Stage: ...

    def __getitem__(self, idx: int | slice) -> Stage | StageList:
        return cast("Stage | StageList", super().__getitem__(idx))

    def __iter__(self) -> Iterator[Stage]:
        return cast("Iterator[Stage]", super().__iter__())
