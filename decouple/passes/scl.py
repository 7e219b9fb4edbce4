"""Method ``scl`` (Delog-SCL / SCPL): a projection head and a supervised contrastive loss per stage.

Every stage but the last gets ``g_l``: pool -> projection head, trained with the supervised
contrastive loss on its own representation (Delog-SCL eq. 2). The head defaults to the SCPL
appendix's ``Linear(d, 512) - ReLU - Linear(512, 1024)``; temperature 0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..objectives.heads import make_projector
from ..objectives.stage_info import StageInfo
from ..objectives.supcon import SupConObjective
from .pooling import PoolOptions
from .registry import register_method

__all__ = ["SupConOptions", "make_supcon", "SCL"]


@dataclass(frozen=True)
class SupConOptions(PoolOptions):
    """Options of ``method="scl"``.

    temperature: tau of the supervised contrastive loss (0.1, as both papers).
    head: "mlp" (Linear-ReLU-Linear over ``head_dims``), "linear", "identity", or ``dim -> nn.Module``.
    head_dims: hidden and output sizes of the MLP head ((512, 1024), the SCPL appendix).
    supcon_variant: "paper" (eq. 2: divide by |P(i)|) or "released" (the authors' code: |P(i)| + 1).
    supcon_reduction: "mean" over anchors (default, as the released code) or "sum" (eq. 2 literally).
    contrast: with data-parallel replicas (``StageTrainer(dm, replicas=R)``), "local" contrasts each
    anchor with its replica's shard; "global" gathers every replica's projections so each anchor meets
    the whole global batch (R replicas then train exactly as one process on that batch).
    """

    temperature: float = 0.1
    head: str | Callable[[int], nn.Module] = "mlp"
    head_dims: tuple[int, ...] = (512, 1024)
    supcon_variant: str = "paper"
    supcon_reduction: str = "mean"
    contrast: str = "local"

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ConfigError(f"temperature must be a positive number, got {self.temperature!r}")
        if self.supcon_variant not in ("paper", "released"):
            raise ConfigError(f"supcon_variant must be 'paper' or 'released', got {self.supcon_variant!r}")
        if self.supcon_reduction not in ("mean", "sum"):
            raise ConfigError(f"supcon_reduction must be 'mean' or 'sum', got {self.supcon_reduction!r}")
        if self.contrast not in ("local", "global"):
            raise ConfigError(
                f"contrast must be 'local' (each replica's shard) or 'global' (the whole batch), got {self.contrast!r}"
            )


def make_supcon(info: StageInfo) -> SupConObjective:
    """Stage ``info.index``'s projection head ``g_l`` and supervised contrastive loss."""
    options = info.options
    return SupConObjective(
        info.pool,
        make_projector(options.head, info.pooled_dim, options.head_dims),
        temperature=float(options.temperature),
        variant=options.supcon_variant,
        reduction=options.supcon_reduction,
        num_classes=info.num_classes,  # when known, targets are range-checked before any stage steps
        contrast=options.contrast,
    )


SCL = register_method(
    "scl",
    make_supcon,
    options=SupConOptions,
    summary="supervised contrastive projection heads per stage (Delog-SCL / SCPL)",
)
