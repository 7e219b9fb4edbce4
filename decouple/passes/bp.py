"""The backprop baseline: the task loss backpropagated through every stage, every optimizer stepping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..compiler.program import Program
from .registry import Method, register_method
from .task import attach_task_loss

__all__ = ["BackpropOptions", "end_to_end"]


@dataclass(frozen=True)
class BackpropOptions:
    """``method="bp"`` takes no options: the model trains end to end on its task loss."""


def end_to_end(program: Program, options: Any) -> None:
    """Train with the task loss backpropagated through every stage (the bp baseline)."""
    program.end_to_end = True


register_method(
    Method(
        "bp",
        (attach_task_loss, end_to_end),
        BackpropOptions,
        "end-to-end backpropagation of the task loss (the baseline)",
    )
)
