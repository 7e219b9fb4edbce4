"""Method ``bp``, the baseline: the task loss backpropagated through every stage, every optimizer stepping."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import register_method

__all__ = ["BackpropOptions", "BP"]


@dataclass(frozen=True)
class BackpropOptions:
    """``method="bp"`` takes no options: the model trains end to end on its task loss."""


BP = register_method(
    "bp",
    None,
    options=BackpropOptions,
    end_to_end=True,
    summary="end-to-end backpropagation of the task loss (the baseline)",
)
