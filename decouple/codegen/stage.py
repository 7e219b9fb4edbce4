"""A stage of a decoupled model: its generated component module, local objective and optimizer.

A stage reads a *message* (``{value name: value}``: the values crossing the cut before it) and
produces the next message. Its generated module exists once per training mode when tracing
froze mode-dependent Python (functional dropout, stochastic depth); both share the same
parameters and buffers, and ``Stage.training`` picks which one runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast, overload

import torch
import torch.fx as fx
from torch import nn

from ..errors import StageError
from ..objectives.base import LocalObjective, LocalResult

__all__ = ["Stage", "StageIO", "StageResult", "StageList"]


@dataclass
class StageIO:
    """What a stage exchanges in one training mode.

    ``inputs``: message values its module reads, in argument order. ``outputs``: values its
    module returns (a dict), all in ``message_out``. ``message_out``: the message it hands on
    (its outputs plus values carried through it). ``shapes``: example shape per value name.
    """

    inputs: list[str]
    outputs: list[str]
    message_out: list[str]
    representation: str | None
    last: bool
    shapes: dict[str, Any] = field(default_factory=dict)


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
        #: what a non-finite local loss does: "raise" a StageError, or "skip" this stage's update
        self.on_nonfinite = "raise"
        self.skipped_steps = 0

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
        out = self.graph_module(*[message[name] for name in io.inputs])
        if io.last:
            return {}, out
        produced: dict[str, Any] = out
        next_message = {name: produced[name] if name in produced else message[name] for name in io.message_out}
        assert io.representation is not None, "a stage before the last has a representation"
        return next_message, produced[io.representation]  # partition guarantees the stage computes it

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
        result: LocalResult = self.objective(output, carry, **self.objective_kwargs(message, next_message))
        return result

    def check_finite(self, loss: torch.Tensor, *, batch: int | None = None) -> bool:
        """Whether to step on ``loss``: a non-finite loss raises a :class:`StageError`
        (``on_nonfinite="raise"``) or is skipped and counted in ``skipped_steps`` (``"skip"``)."""
        if bool(torch.isfinite(loss.detach())):
            return True
        if self.on_nonfinite == "skip":
            self.skipped_steps += 1
            return False
        where = f" at batch {batch}" if batch is not None else ""
        raise StageError(
            f"stage {self.index}: local loss is {float(loss.detach())}{where}; lower the learning rate, check the inputs, "
            "or convert with on_nonfinite='skip' to skip such updates",
            stage=self.index,
            batch=batch,
        )

    def step(self, loss: torch.Tensor, *, batch: int | None = None) -> bool:
        """Backpropagate this stage's local loss and update its parameters; returns whether it stepped."""
        if not self.check_finite(loss, batch=batch):
            return False
        self.backward(loss)
        self.update()
        return True

    def backward(self, loss: torch.Tensor) -> None:
        """Clear this stage's gradients and backpropagate its local loss (first half of :meth:`step`)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()

    def update(self) -> None:
        """The optimizer step on the gradients of :meth:`backward` (second half of :meth:`step`), then the
        gradients are freed: kept until the next backward they would sit beside the next forward's activations."""
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

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
