"""What a conversion's :class:`~.config.TrainingConfig` adds to its stages: schedulers, gradient scalers, compilation.

Called by ``convert()`` after each stage has its optimizer, and again by a rank that moves its
stage to another device (the precision is checked against the devices each time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..codegen.stage import Stage
from ..errors import ConfigError
from .compiled import compile_stages
from .config import SchedulerFactory, TrainingConfig

__all__ = ["prepare_stages", "make_scheduler"]

_EXAMPLE = "scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)"


def prepare_stages(stages: Sequence[Stage], config: TrainingConfig) -> None:
    """Give every stage its scheduler and (fp16) gradient scaler, and compile it if asked."""
    config.check_devices([s.device for s in stages], placed=False)
    for stage in stages:
        stage.scheduler = make_scheduler(config.scheduler, stage)
        stage.scaler = torch.amp.GradScaler("cuda") if config.scaled else None
    compile_stages(stages, config.compile)


def make_scheduler(factory: SchedulerFactory | None, stage: Stage) -> Any:
    """``factory(stage.optimizer)``, checked to be a learning-rate scheduler (``None`` without either)."""
    if factory is None or stage.optimizer is None:
        return None
    try:
        scheduler = factory(stage.optimizer)
    except Exception as exc:
        raise ConfigError(
            f"the scheduler factory failed for stage {stage.index}: {type(exc).__name__}: {exc}. It is called with "
            f"the stage's optimizer, e.g. {_EXAMPLE}"
        ) from exc
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ConfigError(
            "ReduceLROnPlateau steps on a metric, which the runtime does not pick for you; step it yourself from a "
            "fit callback (on_epoch_end) with the metric you choose, or use a schedule such as "
            "CosineAnnealingLR or OneCycleLR"
        )
    if not all(callable(getattr(scheduler, name, None)) for name in ("step", "state_dict", "load_state_dict")):
        raise ConfigError(
            f"the scheduler factory returned {type(scheduler).__name__}, not a learning-rate scheduler; it must return "
            f"one built on the optimizer it is given, e.g. {_EXAMPLE}"
        )
    if getattr(scheduler, "optimizer", stage.optimizer) is not stage.optimizer:
        raise ConfigError(
            f"the scheduler factory returned a scheduler of another optimizer for stage {stage.index}; build it on "
            f"the optimizer it is given, e.g. {_EXAMPLE}"
        )
    return scheduler
