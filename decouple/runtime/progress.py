"""``fit``'s progress bar: one per epoch, with each stage's local loss, the accuracy, the learning rate and validation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .stats import RunStats, StageMeter

if TYPE_CHECKING:
    from tqdm import tqdm as Bar

__all__ = ["open_bar", "show", "show_final", "loader_length"]


def loader_length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:  # no __len__, or an iterable-style DataLoader
        return None


def open_bar(loader: Iterable[Any], epoch: int, epochs: int, progress: bool) -> Bar:
    from tqdm.auto import tqdm

    return tqdm(
        total=loader_length(loader), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=True
    )


def show(bar: Bar, done: int, meters: Sequence[StageMeter], lr: float | None) -> None:
    """The running postfix: latest local loss per stage, accuracy so far, learning rate of stage 0."""
    if bar.disable:
        return
    postfix = {f"s{k}": f"{m.last:.3f}" for k, m in enumerate(meters) if m.last is not None}
    if meters and meters[-1].accuracy is not None:
        postfix["acc"] = f"{meters[-1].accuracy:.3f}"
    if lr is not None:
        postfix["lr"] = f"{lr:.2e}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(done - bar.n)


def show_final(bar: Bar, stats: RunStats) -> None:
    """The epoch's summary: mean losses, accuracy, learning rate, throughput and validation accuracy."""
    if bar.disable:
        return
    postfix = {f"s{k.removeprefix('stage')}": f"{v:.3f}" for k, v in stats.losses.items()}
    if stats.accuracy is not None:
        postfix["acc"] = f"{stats.accuracy:.3f}"
    lr = next(iter(stats.learning_rates.values()), None)
    if lr is not None:
        postfix["lr"] = f"{lr:.2e}"
    postfix["samples/s"] = f"{stats.throughput:.0f}"
    if "accuracy" in stats.validation:
        postfix["val_acc"] = f"{stats.validation['accuracy']:.3f}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(stats.batches - bar.n)
