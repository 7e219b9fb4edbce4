"""SupCon's local objective (Delog-SCL / SCPL): a projection head and the supervised contrastive loss."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from .base import LocalObjective, LocalResult, pooled
from .losses import SupConVariant, check_class_targets, supcon_loss
from .precision import upcast

__all__ = ["SupConObjective"]


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
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes  # when known, targets are range-checked before any stage steps
        self.pool = pool
        self.projector = projector
        self.temperature = temperature
        self.variant = variant
        self.reduction = reduction

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        z = F.normalize(upcast(self.projector(pooled(self.pool, representation, extras))), dim=1)  # (N, D), in fp32
        labels = check_class_targets(carry, z.shape[0], method="scl", num_classes=self.num_classes)
        loss = supcon_loss(z, labels, self.temperature, variant=self.variant, reduction=self.reduction)  # type: ignore[arg-type]
        return LocalResult(loss, carry)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, variant={self.variant!r}"
