"""The task objective: the model's own loss for the stage that ends the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import TargetError
from .base import LocalObjective, LocalResult
from .losses import logits_of
from .precision import full_precision

__all__ = ["TaskObjective"]


class TaskObjective(LocalObjective):
    """The model's own task loss, ``loss_fn(output, target)``, for the stage that ends the model."""

    def __init__(self, loss_fn: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        self.loss_fn = loss_fn

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        loss = full_precision(self.loss_fn)(representation, carry)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise TargetError(f"loss_fn must return a scalar tensor, got {shape}; reduce it with .mean()")
        return LocalResult(loss, carry, logits_of(representation))

    def extra_repr(self) -> str:
        return f"loss_fn={getattr(self.loss_fn, '__name__', type(self.loss_fn).__name__)}"
