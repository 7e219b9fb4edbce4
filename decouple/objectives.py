"""Local objectives: the modules a stage trains against, holding its affiliated parameters.

An objective is called with the stage's representation and the *carry*, the target-side value
that travels with the activations (the labels, or for associated learning the label embedding
of the previous layer), and returns a :class:`LocalResult`: the loss, the carry for the next
stage (detached), and optionally the logits it predicts, for metrics.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TargetError
from .heads import first_tensor
from .losses import SupConVariant, check_class_targets, logits_of, supcon_loss

__all__ = ["LocalResult", "LocalObjective", "SupConObjective", "TaskObjective"]


@dataclass
class LocalResult:
    """What one stage's objective produced for one batch."""

    loss: torch.Tensor
    carry: Any
    prediction: torch.Tensor | None = None


class LocalObjective(nn.Module, abc.ABC):
    """Base class: ``forward(representation, carry, **extras) -> LocalResult``."""

    @abc.abstractmethod
    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        """Compute the stage's local loss from its representation and the carried target."""


def _pool(pool: nn.Module, representation: Any, extras: dict[str, Any]) -> torch.Tensor:
    return pool(representation, **extras) if extras else pool(representation)


class SupConObjective(LocalObjective):
    """Projection head + supervised contrastive loss (Delog-SCL / SCPL).

    ``pool`` makes a vector of the representation, ``projector`` is the head ``g_l``; the loss
    is computed on the L2-normalised projection.
    """

    def __init__(
        self,
        pool: nn.Module,
        projector: nn.Module,
        *,
        temperature: float = 0.1,
        variant: SupConVariant = "paper",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.pool = pool
        self.projector = projector
        self.temperature = temperature
        self.variant = variant
        self.reduction = reduction

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        z = F.normalize(self.projector(_pool(self.pool, representation, extras)), dim=1)  # (N, D)
        labels = check_class_targets(carry, z.shape[0], method="scl")
        loss = supcon_loss(z, labels, self.temperature, variant=self.variant, reduction=self.reduction)  # type: ignore[arg-type]
        return LocalResult(loss, carry)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, variant={self.variant!r}"


class TaskObjective(LocalObjective):
    """The model's own task loss, ``loss_fn(output, target)``, for the stage that ends the model."""

    def __init__(self, loss_fn: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        self.loss_fn = loss_fn

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        loss = self.loss_fn(representation, carry)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise TargetError(f"loss_fn must return a scalar tensor, got {shape}; reduce it with .mean()")
        return LocalResult(loss, carry, logits_of(representation))

    def extra_repr(self) -> str:
        return f"loss_fn={getattr(self.loss_fn, '__name__', type(self.loss_fn).__name__)}"
