"""The SCL pass (Delog-SCL / SCPL): a projection head and a supervised contrastive loss per stage.

Every stage but the last gets ``g_l``: pool -> projection head, trained with the supervised
contrastive loss on its own representation (Delog-SCL eq. 2). The head defaults to the SCPL
appendix's ``Linear(d, 512) - ReLU - Linear(512, 1024)``; temperature 0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..compiler.program import Program
from ..errors import ConfigError
from ..objectives.heads import make_projector
from ..objectives.losses import default_task_loss, logits_of
from ..objectives.pools import output_dim
from ..objectives.supcon import SupConObjective
from .detach import detach_boundaries
from .pooling import PoolOptions, build_pool
from .registry import Method, register_method
from .task import attach_task_loss

__all__ = ["SupConOptions", "attach_supcon"]


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


def attach_supcon(program: Program, options: Any) -> None:
    """Give every stage but the last a projection head and a supervised contrastive loss."""
    classes = _known_classes(program)
    for spec in program.stages[:-1]:
        pool, example = build_pool(program, spec.index, options)
        projector = make_projector(options.head, output_dim(pool, example), options.head_dims)
        spec.objective = SupConObjective(
            pool,
            projector,
            temperature=float(options.temperature),
            variant=options.supcon_variant,
            reduction=options.supcon_reduction,
            num_classes=classes,
            contrast=options.contrast,
        )


def _known_classes(program: Program) -> int | None:
    """The number of classes when it is given, or when the default cross-entropy reads ``(N, C)`` logits.

    SupCon itself needs no class count; knowing it lets stage 0 reject an out-of-range target before it
    steps, instead of the last stage failing after the earlier ones have updated.
    """
    if program.num_classes is not None:
        return program.num_classes
    if program.loss_fn is not default_task_loss:
        return None
    logits = logits_of(program.output_value())
    return int(logits.shape[1]) if logits is not None and logits.dim() == 2 else None


register_method(
    Method(
        "scl",
        (detach_boundaries, attach_supcon, attach_task_loss),
        SupConOptions,
        "supervised contrastive projection heads per stage (Delog-SCL / SCPL)",
    )
)
