"""How the stages train, beyond the optimizer: one small record that every runtime reads the same way.

``convert(..., scheduler=, scheduler_interval=, precision=, clip_grad_norm=, clip_grad_value=,
accumulate=, compile=)`` is checked into a :class:`TrainingConfig` once; the sequential step, the
threaded pipeline and the rank loop all hand it to :mod:`.step`, so they honour it identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, close_matches

__all__ = ["TrainingConfig", "SchedulerFactory", "PRECISIONS", "INTERVALS"]

SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

#: accepted spellings of each precision
PRECISIONS: dict[str, tuple[Any, ...]] = {"32": ("32", 32, "fp32", "float32"), "bf16": ("bf16", "bfloat16"),
                                          "fp16": ("fp16", 16, "16", "float16")}  # fmt: skip
INTERVALS = ("step", "epoch")


@dataclass(frozen=True)
class TrainingConfig:
    """The training settings of a conversion (see :func:`decouple.convert`).

    ``precision``: "32", "bf16" or "fp16" (autocast of each stage's forward and head, losses in
    fp32; "fp16" adds a gradient scaler per stage). ``scheduler``: ``optimizer -> LR scheduler``,
    called once per stage, stepped every ``scheduler_interval`` ("step": after each optimizer step,
    "epoch": at the end of each epoch of ``fit``). ``clip_grad_norm`` / ``clip_grad_value``: per
    stage, over its module and head parameters, after unscaling. ``accumulate``: batches per
    optimizer step. ``compile``: ``torch.compile`` each stage's module and objective (``True`` or
    the keyword arguments of ``torch.compile``).
    """

    scheduler: SchedulerFactory | None = None
    scheduler_interval: str = "step"
    precision: str = "32"
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    accumulate: int = 1
    compile: dict[str, Any] | None = field(default=None)  # torch.compile's keyword arguments, None: eager

    @classmethod
    def create(
        cls,
        *,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        precision: Any = "32",
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        accumulate: int = 1,
        compile: bool | dict[str, Any] = False,
    ) -> TrainingConfig:
        """Check every setting and return the record; a bad one raises :class:`ConfigError` naming the fix."""
        if scheduler is not None and (
            isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler) or not callable(scheduler)
        ):
            raise ConfigError(
                "scheduler must be a factory called with each stage's optimizer, not a scheduler instance, e.g. "
                "scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)"
            )
        if scheduler_interval not in INTERVALS:
            raise ConfigError(
                f"scheduler_interval must be 'step' (after every optimizer step) or 'epoch' (after every epoch of fit), "
                f"got {scheduler_interval!r}{close_matches(str(scheduler_interval), INTERVALS)}"
            )
        return cls(
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            precision=_precision(precision),
            clip_grad_norm=_positive_float(clip_grad_norm, "clip_grad_norm"),
            clip_grad_value=_positive_float(clip_grad_value, "clip_grad_value"),
            accumulate=_accumulate(accumulate),
            compile=_compile_options(compile),
        )

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, ``None`` in full precision."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def scaled(self) -> bool:
        """Whether each stage keeps a gradient scaler (fp16)."""
        return self.precision == "fp16"

    def check_devices(self, devices: Sequence[torch.device], *, placed: bool = True) -> None:
        """Raise :class:`ConfigError` when a stage's device cannot train in this precision.

        ``placed=False`` (at conversion): a CPU stage may still move to a GPU (``StageTrainer(dm,
        device="cuda")``), so fp16 only needs CUDA on this machine; the step checks again.
        """
        for d in devices:
            if self.precision == "fp16" and d.type != "cuda" and (placed or not torch.cuda.is_available()):
                raise ConfigError(
                    f"precision='fp16' needs CUDA stages (fp16 autocast with gradient scaling), but a stage runs on "
                    f"{d}; use precision='bf16' on CPU, or put the stages on GPUs with devices=['cuda:0', ...]"
                )
            if self.precision == "bf16" and d.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise ConfigError(
                    f"precision='bf16' needs a GPU with bfloat16 support, and {d} has none; use precision='fp16'"
                )

    def describe(self) -> str:
        """One line for reports: what differs from plain fp32 training with one batch per step."""
        parts = [f"precision {self.precision}"]
        if self.scheduler is not None:
            parts.append(f"scheduler per {self.scheduler_interval}")
        if self.clip_grad_norm is not None:
            parts.append(f"clip norm {self.clip_grad_norm:g}")
        if self.clip_grad_value is not None:
            parts.append(f"clip value {self.clip_grad_value:g}")
        if self.accumulate > 1:
            parts.append(f"accumulate {self.accumulate}")
        if self.compile is not None:
            parts.append("compiled")
        return ", ".join(parts)


def _precision(value: Any) -> str:
    for name, spellings in PRECISIONS.items():
        if value in spellings:
            return name
    known = [str(s) for spellings in PRECISIONS.values() for s in spellings]
    raise ConfigError(
        f"unknown precision {value!r}{close_matches(str(value), known)}; choose '32' (full precision, the default), "
        "'bf16' (bfloat16 autocast: CPU and recent GPUs) or 'fp16' (float16 autocast with gradient scaling: CUDA)"
    )


def _positive_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number (or None to leave it off), got {value!r}")
    return float(value)


def _accumulate(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"accumulate must be an int >= 1 (batches whose gradients each stage sums before it steps; 1 steps "
            f"after every batch), got {value!r}"
        )
    return value


def _compile_options(value: Any) -> dict[str, Any] | None:
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise ConfigError(
        f"compile must be True, False or a dict of torch.compile keyword arguments (e.g. {{'mode': 'max-autotune'}}), "
        f"got {value!r}"
    )
