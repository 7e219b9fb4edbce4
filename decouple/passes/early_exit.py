"""Method ``early_exit``: an auxiliary classifier per stage, trained with cross-entropy on its input.

Every stage but the last gets ``pool -> Linear(d, C)`` (or a small MLP) on its representation;
the last stage keeps the model's task loss. Inference is the original model; the exits serve
``inference_module(exit=l)`` and per-sample early exit (``exit_threshold=p``, BranchyNet-style).
``dgl`` (``passes/dgl.py``) is the same idea with a deeper auxiliary network.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..objectives.early_exit import ExitObjective
from ..objectives.heads import PooledHead, make_mlp
from ..objectives.stage_info import StageInfo
from .pooling import PoolOptions
from .registry import register_method

__all__ = ["ExitOptions", "make_exit", "EARLY_EXIT"]


@dataclass(frozen=True)
class ExitOptions(PoolOptions):
    """Options of ``method="early_exit"``.

    exit_head: "linear" (pool -> Linear(d, C), the papers' baseline) or "mlp"
    (pool -> Linear(d, exit_hidden) - ReLU - Linear(exit_hidden, C)).
    """

    exit_head: str = "linear"
    exit_hidden: int = 256

    def __post_init__(self) -> None:
        if self.exit_head not in ("linear", "mlp"):
            raise ConfigError(f"exit_head must be 'linear' or 'mlp', got {self.exit_head!r}")
        if not isinstance(self.exit_hidden, int) or self.exit_hidden < 1:
            raise ConfigError(f"exit_hidden must be a positive int, got {self.exit_hidden!r}")


def make_exit(info: StageInfo) -> ExitObjective:
    """Stage ``info.index``'s exit classifier, trained with cross-entropy."""
    classes = info.require_classes()
    hidden = info.options.exit_hidden if info.options.exit_head == "mlp" else None
    classifier = PooledHead(info.pool, make_mlp(info.pooled_dim, classes, hidden=hidden))
    return ExitObjective(classifier, classes)


EARLY_EXIT = register_method(
    "early_exit",
    make_exit,
    options=ExitOptions,
    summary="an auxiliary classifier per stage trained with cross-entropy (early exit)",
)
