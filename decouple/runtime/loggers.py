"""``fit(log_dir=...)``: a CSV file per epoch and per step, and TensorBoard event files when ``tensorboard`` is installed.

``epochs.csv``: one row per epoch (mean local loss and learning rate per stage, training accuracy,
throughput, seconds, validation metrics). ``steps.csv``: every ``log_every`` steps, each stage's
latest local loss and learning rate. TensorBoard (``pip install torch-decouple[tensorboard]``)
gets the same scalars, per step under ``train/`` and per epoch under ``epoch/`` and ``val/``.
Resuming appends to the same files.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError
from .callbacks import Callback, StepLog
from .protocol import StagedModel
from .stats import RunStats

__all__ = ["CSVLogger", "TensorBoardLogger", "loggers_for", "tensorboard_available", "epoch_row"]


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write event files (the ``tensorboard`` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


def epoch_row(epoch: int, stats: RunStats) -> dict[str, float | int | None]:
    """The flat record of one epoch: what ``epochs.csv`` holds and TensorBoard plots per epoch."""
    row: dict[str, float | int | None] = {
        "epoch": epoch + 1,
        "batches": stats.batches,
        "seconds": stats.seconds,
        "samples_per_s": stats.throughput,
        "train_accuracy": stats.accuracy,
    }
    row.update({f"{k}_loss": v for k, v in stats.losses.items()})
    row.update({f"{k}_lr": v for k, v in stats.learning_rates.items()})
    row.update({f"val_{k}": v for k, v in stats.validation.items()})
    return row


class _CSVFile:
    """A CSV file written row by row; a row with new columns rewrites the header (and earlier rows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():  # resuming: keep what the earlier run wrote
            with path.open(newline="") as f:
                self.rows = list(csv.DictReader(f))
        self.columns: list[str] = list(self.rows[0]) if self.rows else []
        self._file: IO[str] | None = None

    def write(self, row: dict[str, Any]) -> None:
        fresh = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if fresh or self._file is None:
            self.columns += fresh
            self._rewrite()
        else:
            csv.DictWriter(self._file, self.columns).writerow(row)
            self._file.flush()

    def _rewrite(self) -> None:
        self.close()
        self._file = self.path.open("w", newline="")
        writer = csv.DictWriter(self._file, self.columns)
        writer.writeheader()
        writer.writerows(self.rows)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class CSVLogger(Callback):
    """``epochs.csv`` (one row per epoch) and ``steps.csv`` (every ``log_every`` steps) in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], *, log_every: int = 50, prefix: str = "") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_every = log_every
        self.epochs = _CSVFile(self.directory / f"{prefix}epochs.csv")
        self.steps = _CSVFile(self.directory / f"{prefix}steps.csv")

    def on_step(self, dm: StagedModel, log: StepLog) -> None:
        if log.step % self.log_every == 0:
            row: dict[str, float] = {"epoch": log.epoch + 1, "batch": log.batch, "step": log.step}
            row.update({f"{k}_loss": v for k, v in log.losses.items()})
            row.update({f"{k}_lr": v for k, v in log.learning_rates.items()})
            self.steps.write(row)

    def on_epoch_end(self, dm: StagedModel, epoch: int, stats: RunStats) -> None:
        self.epochs.write(epoch_row(epoch, stats))

    def on_fit_end(self, dm: StagedModel, history: Sequence[RunStats]) -> None:
        self.epochs.close()
        self.steps.close()


class TensorBoardLogger(Callback):
    """TensorBoard event files in ``directory``: ``train/stage{k}_loss``, ``train/stage{k}_lr`` per step,
    ``epoch/...`` and ``val/...`` per epoch."""

    def __init__(self, directory: str | os.PathLike[str], *, log_every: int = 10) -> None:
        if not tensorboard_available():
            raise ConfigError(
                "TensorBoard logging needs the tensorboard package: pip install 'torch-decouple[tensorboard]' "
                "(fit(log_dir=...) writes CSV files without it)"
            )
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(directory))
        self.log_every = log_every

    def on_step(self, dm: StagedModel, log: StepLog) -> None:
        if log.step % self.log_every == 0:
            for k, v in log.losses.items():
                self.writer.add_scalar(f"train/{k}_loss", v, log.step)
            for k, v in log.learning_rates.items():
                self.writer.add_scalar(f"train/{k}_lr", v, log.step)

    def on_epoch_end(self, dm: StagedModel, epoch: int, stats: RunStats) -> None:
        for key, value in epoch_row(epoch, stats).items():
            if key != "epoch" and value is not None:
                group = "val" if key.startswith("val_") else "epoch"
                self.writer.add_scalar(f"{group}/{key.removeprefix('val_')}", value, epoch + 1)
        self.writer.flush()

    def on_fit_end(self, dm: StagedModel, history: Sequence[RunStats]) -> None:
        self.writer.close()


def loggers_for(log_dir: str | os.PathLike[str] | None, *, prefix: str = "") -> list[Callback]:
    """The loggers ``fit(log_dir=...)`` adds: CSV always, TensorBoard when it is installed."""
    if log_dir is None:
        return []
    loggers: list[Callback] = [CSVLogger(log_dir, prefix=prefix)]
    if tensorboard_available():
        loggers.append(TensorBoardLogger(Path(log_dir) / f"{prefix}tensorboard"))
    return loggers
