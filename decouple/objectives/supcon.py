"""SupCon's local objective (Delog-SCL / SCPL): a projection head and the supervised contrastive loss."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .base import LocalObjective, LocalResult, pooled
from .losses import SupConVariant, check_class_targets, supcon_loss
from .precision import upcast

__all__ = ["SupConObjective"]


class SupConObjective(LocalObjective):
    """Projection head + supervised contrastive loss (Delog-SCL / SCPL).

    ``pool`` makes a vector of the representation, ``projector`` is the head ``g_l``; the loss
    is computed on the L2-normalised projection. With data-parallel replicas, ``contrast="local"``
    contrasts each anchor with the samples of its own shard; ``"global"`` gathers the projections of
    every replica (with gradient) so each anchor is contrasted with the whole global batch, as one
    process on that batch would.
    """

    def __init__(
        self,
        pool: nn.Module,
        projector: nn.Module,
        *,
        temperature: float = 0.1,
        variant: SupConVariant = "paper",
        reduction: Literal["mean", "sum"] = "mean",
        num_classes: int | None = None,
        contrast: Literal["local", "global"] = "local",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes  # when known, targets are range-checked before any stage steps
        self.pool = pool
        self.projector = projector
        self.temperature = temperature
        self.variant = variant
        self.reduction = reduction
        self.contrast = contrast
        self.replica_group: dist.ProcessGroup | None = None
        self.replicas = 1

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        z = F.normalize(upcast(self.projector(pooled(self.pool, representation, extras))), dim=1)  # (N, D), in fp32
        labels = check_class_targets(carry, z.shape[0], method="scl", num_classes=self.num_classes)
        if self.replica_group is None:
            loss = supcon_loss(z, labels, self.temperature, variant=self.variant, reduction=self.reduction)
            return LocalResult(loss, carry)
        # the global batch: every replica's projections (gradients flow back to their owners) and labels
        rank = dist.get_rank(self.replica_group)
        everyone = _GatherRows.apply(z, self.replica_group, self.replicas, rank)
        all_labels = [torch.empty_like(labels) for _ in range(self.replicas)]
        dist.all_gather(all_labels, labels.contiguous(), group=self.replica_group)
        start = rank * z.shape[0]
        loss = supcon_loss(
            everyone, torch.cat(all_labels), self.temperature, variant=self.variant, reduction=self.reduction,
            anchors=slice(start, start + z.shape[0]),
        )  # fmt: skip
        # replicas average their gradients: a summed loss must count every replica's anchors once
        return LocalResult(loss * self.replicas if self.reduction == "sum" else loss, carry)

    def attach_replicas(self, group: dist.ProcessGroup, replicas: int) -> None:
        """With ``contrast="global"``, contrast every anchor with the samples of all ``replicas``."""
        if self.contrast == "global":
            self.replica_group, self.replicas = group, replicas

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, variant={self.variant!r}, contrast={self.contrast!r}"


class _GatherRows(torch.autograd.Function):
    """The rows of every replica's ``z`` (equal shapes), concatenated in replica order; gradients flow back to their owner.

    Each replica's loss reads every row, so the gradient a replica's rows receive is the sum over
    replicas of that loss's gradient with respect to them: an all-reduce of the full gradient, then
    this replica's slice. (``torch.distributed.nn.functional.all_gather`` does this with an
    all-to-all that gloo cannot run on a subgroup.)
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, group: dist.ProcessGroup, replicas: int, rank: int) -> torch.Tensor:
        parts = [torch.empty_like(z) for _ in range(replicas)]
        dist.all_gather(parts, z.contiguous(), group=group)
        ctx.group, ctx.rows, ctx.rank = group, z.shape[0], rank
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None, None
