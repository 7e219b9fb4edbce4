"""The early-exit pass: an auxiliary classifier per stage, trained with cross-entropy on its input.

Every stage but the last gets ``pool -> Linear(d, C)`` (or a small MLP) on its representation;
the last stage keeps the model's task loss. Inference is the original model; the exits serve
``inference_module(exit=l)`` and per-sample early exit (``exit_threshold=p``, BranchyNet-style).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..compiler.program import InferenceTail, Program
from ..errors import ConfigError
from ..objectives.early_exit import ExitObjective
from ..objectives.heads import PooledHead, make_mlp
from ..objectives.pools import output_dim
from .detach import detach_boundaries
from .pooling import PoolOptions, build_pool, infer_num_classes
from .registry import Method, register_method
from .task import attach_task_loss

__all__ = ["ExitOptions", "attach_exits"]


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


def attach_exits(program: Program, options: Any) -> None:
    """Give every stage but the last an exit classifier trained with cross-entropy."""
    classes = infer_num_classes(program, "early_exit")
    for spec in program.stages[:-1]:
        pool, example = build_pool(program, spec.index, options)
        hidden = options.exit_hidden if options.exit_head == "mlp" else None
        classifier = PooledHead(pool, make_mlp(output_dim(pool, example), classes, hidden=hidden))
        spec.objective = ExitObjective(classifier, classes)
        exit_at = spec.index + 1
        program.tails[exit_at] = InferenceTail(exit_at, [(f"exit_{exit_at}", classifier)], dict(spec.objective_extras))


register_method(
    Method(
        "early_exit",
        (detach_boundaries, attach_exits, attach_task_loss),
        ExitOptions,
        "an auxiliary classifier per stage trained with cross-entropy (early exit)",
    )
)
