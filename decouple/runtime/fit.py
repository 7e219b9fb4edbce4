"""Training over a data loader: batch unpacking, epochs, and a progress bar with per-stage losses.

Decoupled methods train through the cross-batch pipeline (one pipeline for all epochs, drained
at the end of each, so ``on_epoch_end`` sees a quiescent model); ``bp`` and ``pipelined=False``
train with the sequential ``train_step`` semantics. Both report the same statistics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, InputError
from . import sequential
from .batches import unpack_batch
from .pipeline import Pipeline
from .protocol import StagedModel
from .stats import RunStats, StageMeter, batch_size, correct_predictions, peak_memory

if TYPE_CHECKING:
    from tqdm import tqdm as Bar

__all__ = ["fit"]

EpochCallback = Callable[[int, RunStats], Any]


def fit(
    dm: StagedModel,
    loader: Iterable[Any],
    epochs: int = 1,
    *,
    pipelined: bool = True,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
    depth: int = 2,
    record: bool = False,
) -> list[RunStats]:
    """Train ``dm`` for ``epochs`` passes over ``loader``; one :class:`RunStats` per epoch."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an int >= 1, got {epochs!r}")
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise ConfigError(
            f"on_epoch_end must be callable as on_epoch_end(epoch, stats), got {type(on_epoch_end).__name__}"
        )
    use_pipeline = pipelined and not dm.end_to_end
    if record and not use_pipeline:
        why = f"method {dm.method!r} trains end to end" if dm.end_to_end else "pipelined=False"
        raise ConfigError(f"record=True records the pipeline, but {why}; leave record out or use the pipeline")
    if _length(loader) == 0:
        raise InputError("the loader is empty (len 0): fit() needs at least one batch")
    history: list[RunStats] = []
    if use_pipeline:
        with dm.pipeline(depth=depth, record=record) as pipe:
            for epoch in range(epochs):
                dm.train()
                with _bar(loader, epoch, epochs, progress) as bar:
                    stats = _pipelined_epoch(pipe, loader, bar)
                _finish_epoch(history, epoch, stats, on_epoch_end)
    else:
        for epoch in range(epochs):
            dm.train()
            with _bar(loader, epoch, epochs, progress) as bar:
                stats = _sequential_epoch(dm, loader, bar)
            _finish_epoch(history, epoch, stats, on_epoch_end)
    return history


def _finish_epoch(history: list[RunStats], epoch: int, stats: RunStats, on_epoch_end: EpochCallback | None) -> None:
    if stats.batches == 0:
        raise InputError(
            f"the loader yielded no batches in epoch {epoch + 1}: fit() needs at least one batch per epoch"
        )
    history.append(stats)
    if on_epoch_end is not None:
        on_epoch_end(epoch, stats)


def _pipelined_epoch(pipe: Pipeline, loader: Iterable[Any], bar: Bar) -> RunStats:
    before = pipe.completed  # the pipeline stays open across epochs
    for batch in loader:
        args, kwargs, target = unpack_batch(batch)
        pipe.submit(*args, target=target, **kwargs)
        _show(bar, pipe.completed - before, pipe.meters())
    stats = pipe.drain()
    _show_final(bar, stats)
    return stats


def _sequential_epoch(dm: StagedModel, loader: Iterable[Any], bar: Bar) -> RunStats:
    stages = list(dm.stages)
    meters = [StageMeter() for _ in stages]
    batches = samples = 0
    start = time.perf_counter()
    for batch in loader:
        args, kwargs, target = unpack_batch(batch)
        results: list[Any] = []
        losses = sequential.train_step(stages, dm.bind(args, kwargs), target, end_to_end=dm.end_to_end, results=results)
        dm.steps += 1
        for k, loss in enumerate(losses):
            if loss is None:
                continue
            scored = correct_predictions(results[k].prediction, target) if k == len(stages) - 1 else None
            meters[k].add(loss, *(scored or (None, 0)))
        batches += 1
        samples += batch_size(args, kwargs, target)
        _show(bar, batches, meters)
    stats = RunStats(
        losses={f"stage{k}": m.mean for k, m in enumerate(meters) if m.mean is not None},
        batches=batches,
        samples=samples,
        seconds=time.perf_counter() - start,
        accuracy=meters[-1].accuracy,
        peak_memory=peak_memory([s.device for s in stages]),
    )
    _show_final(bar, stats)
    return stats


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:  # no __len__, or an iterable-style DataLoader
        return None


def _bar(loader: Iterable[Any], epoch: int, epochs: int, progress: bool) -> Bar:
    from tqdm.auto import tqdm

    return tqdm(
        total=_length(loader), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=True
    )


def _show(bar: Bar, done: int, meters: Sequence[StageMeter]) -> None:
    if bar.disable:
        return
    postfix = {f"s{k}": f"{m.last:.3f}" for k, m in enumerate(meters) if m.last is not None}
    if meters and meters[-1].accuracy is not None:
        postfix["acc"] = f"{meters[-1].accuracy:.3f}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(done - bar.n)


def _show_final(bar: Bar, stats: RunStats) -> None:
    if bar.disable:
        return
    postfix = {f"s{k.removeprefix('stage')}": f"{v:.3f}" for k, v in stats.losses.items()}
    if stats.accuracy is not None:
        postfix["acc"] = f"{stats.accuracy:.3f}"
    postfix["samples/s"] = f"{stats.throughput:.0f}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(stats.batches - bar.n)
