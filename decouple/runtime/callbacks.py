"""Hooks into ``fit``: users' own code after each step and each epoch, and the loggers, through one interface.

Every hook runs in the caller's thread. ``on_step`` runs once per batch that every stage has
trained, in batch order; under the pipeline it runs as the last stage finishes batches (so a few
batches after they were submitted), with each stage's most recent local loss. ``on_epoch_end``
runs with no batch in flight, after the epoch's last partial accumulation group has stepped, the
per-epoch schedulers have stepped and the validation set has been evaluated, and before the
checkpoint is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .protocol import StagedModel
from .stats import RunStats

__all__ = ["Callback", "StepLog", "CallbackList", "EpochFunction", "as_callbacks"]


@dataclass(frozen=True)
class StepLog:
    """One trained batch as ``on_step`` sees it.

    ``epoch`` and ``batch`` count from 0 (``batch`` within the epoch); ``step`` is ``dm.steps`` after
    the batch (batches every stage has trained since conversion). ``losses``: each stage's most
    recent local loss (``"stage0"``, ...); ``learning_rates``: each stage's current learning rate.
    """

    epoch: int
    batch: int
    step: int
    losses: dict[str, float] = field(default_factory=dict)
    learning_rates: dict[str, float] = field(default_factory=dict)


class Callback:
    """Subclass and override what you need; every method does nothing by default."""

    def on_fit_start(self, dm: StagedModel, first_epoch: int, epochs: int) -> None:
        """Before the first epoch this call trains (``first_epoch`` > 0 after resuming)."""

    def on_step(self, dm: StagedModel, log: StepLog) -> None:
        """After each batch that every stage has trained."""

    def on_epoch_end(self, dm: StagedModel, epoch: int, stats: RunStats) -> None:
        """After each epoch, with no batch in flight; ``stats.validation`` holds the validation metrics."""

    def on_fit_end(self, dm: StagedModel, history: Sequence[RunStats]) -> None:
        """After the last epoch (also when there was nothing left to train after resuming)."""


EpochFunction = Callable[[int, RunStats], Any]


class _EpochFunction(Callback):
    """``fit(on_epoch_end=fn)``: ``fn(epoch, stats)`` as a callback."""

    def __init__(self, fn: EpochFunction) -> None:
        self.fn = fn

    def on_epoch_end(self, dm: StagedModel, epoch: int, stats: RunStats) -> None:
        self.fn(epoch, stats)


class CallbackList(Callback):
    """Several callbacks called in order; ``wants_steps`` tells whether any overrides ``on_step``."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)
        self.wants_steps = any(type(c).on_step is not Callback.on_step for c in self.callbacks)

    def on_fit_start(self, dm: StagedModel, first_epoch: int, epochs: int) -> None:
        for c in self.callbacks:
            c.on_fit_start(dm, first_epoch, epochs)

    def on_step(self, dm: StagedModel, log: StepLog) -> None:
        for c in self.callbacks:
            c.on_step(dm, log)

    def on_epoch_end(self, dm: StagedModel, epoch: int, stats: RunStats) -> None:
        for c in self.callbacks:
            c.on_epoch_end(dm, epoch, stats)

    def on_fit_end(self, dm: StagedModel, history: Sequence[RunStats]) -> None:
        for c in self.callbacks:
            c.on_fit_end(dm, history)


def as_callbacks(callbacks: Iterable[Callback] | Callback | None, on_epoch_end: EpochFunction | None) -> list[Callback]:
    """Check ``fit``'s ``callbacks`` and ``on_epoch_end`` arguments; one list of callbacks."""
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    found = list(callbacks or ())
    for c in found:
        if not isinstance(c, Callback):
            raise ConfigError(
                f"callbacks must be decouple.Callback instances, got {type(c).__name__}; subclass decouple.Callback "
                "and override on_step / on_epoch_end (or pass on_epoch_end=fn for a plain function)"
            )
    if on_epoch_end is not None:
        if not callable(on_epoch_end):
            raise ConfigError(
                f"on_epoch_end must be callable as on_epoch_end(epoch, stats), got {type(on_epoch_end).__name__}"
            )
        found.append(_EpochFunction(on_epoch_end))
    return found
