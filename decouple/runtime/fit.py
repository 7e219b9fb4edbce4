"""Training over a data loader: epochs, validation, logging, callbacks, checkpoints and resuming.

Decoupled methods train through the cross-batch pipeline (one pipeline for all epochs, drained
at the end of each, so the end of an epoch sees a quiescent model); ``bp`` and ``pipelined=False``
train with the sequential ``train_step`` semantics. Both report the same statistics. After each
epoch, in this order: each stage's last partial accumulation group steps and the per-epoch
schedulers step (:func:`.step.end_epoch`), the validation loader runs through the inference path
(:mod:`.validation`), the callbacks and loggers see the epoch (:mod:`.callbacks`, :mod:`.loggers`),
and the checkpoint is written (:mod:`.checkpoints`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError, InputError
from . import sequential
from .backward_gate import BackwardSlots
from .batches import unpack_batch
from .callbacks import Callback, CallbackList, EpochFunction, StepLog, as_callbacks
from .checkpoints import (
    check_keep,
    checkpoint_name,
    history_state,
    load_newest_model_state,
    prune,
    restore_history,
    restore_rng,
    rng_state,
    save_atomically,
)
from .loggers import loggers_for
from .pipeline import Pipeline
from .progress import loader_length, open_bar, show, show_final
from .protocol import StagedModel
from .state import load_model_state, model_state
from .stats import RunStats, StageMeter, batch_size, correct_predictions, peak_memory
from .step import end_epoch, learning_rate
from .validation import validate

if TYPE_CHECKING:
    from tqdm import tqdm as Bar

__all__ = ["fit", "learning_rates", "resume_from"]

Path_ = str | os.PathLike[str]


def fit(
    dm: StagedModel,
    loader: Iterable[Any],
    epochs: int = 1,
    *,
    pipelined: bool = True,
    progress: bool = True,
    on_epoch_end: EpochFunction | None = None,
    depth: int = 2,
    record: bool = False,
    backward_slots: BackwardSlots = "auto",
    validation: Iterable[Any] | None = None,
    log_dir: Path_ | None = None,
    callbacks: Iterable[Callback] | Callback | None = None,
    checkpoint_dir: Path_ | None = None,
    resume: bool = False,
    keep_checkpoints: int = 2,
) -> list[RunStats]:
    """Train ``dm`` until ``epochs`` passes over ``loader``; one :class:`RunStats` per epoch (see the module docstring).

    ``epochs`` counts from the start of training: resuming after 2 of ``epochs=3`` trains one more,
    and the history returned holds all 3.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an int >= 1, got {epochs!r}")
    use_pipeline = pipelined and not dm.end_to_end
    if record and not use_pipeline:
        why = f"method {dm.method!r} trains end to end" if dm.end_to_end else "pipelined=False"
        raise ConfigError(f"record=True records the pipeline, but {why}; leave record out or use the pipeline")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True continues from the newest checkpoint in checkpoint_dir; pass checkpoint_dir=")
    keep = check_keep(keep_checkpoints)
    if loader_length(loader) == 0:
        raise InputError("the loader is empty (len 0): fit() needs at least one batch")
    hooks = CallbackList([*as_callbacks(callbacks, on_epoch_end), *loggers_for(log_dir)])
    history, first = resume_from(dm, checkpoint_dir) if resume and checkpoint_dir is not None else ([], 0)
    run = _Run(dm, loader, epochs, hooks, history, progress, validation, checkpoint_dir, keep)
    hooks.on_fit_start(dm, first, epochs)
    if use_pipeline and first < epochs:
        with dm.pipeline(depth=depth, record=record, backward_slots=backward_slots) as pipe:
            for epoch in range(first, epochs):
                run.epoch(epoch, lambda bar, epoch=epoch: run.pipelined(pipe, bar, epoch))  # type: ignore[misc]
    else:
        for epoch in range(first, epochs):
            run.epoch(epoch, lambda bar, epoch=epoch: run.sequential(bar, epoch))  # type: ignore[misc]
    hooks.on_fit_end(dm, history)
    return history


def learning_rates(dm: StagedModel) -> dict[str, float]:
    """Each stage's current learning rate (stages with an optimizer)."""
    rates = {f"stage{s.index}": learning_rate(s) for s in dm.stages}
    return {k: v for k, v in rates.items() if v is not None}


def resume_from(dm: StagedModel, directory: Path_) -> tuple[list[RunStats], int]:
    """Load the newest readable checkpoint in ``directory`` into ``dm`` (a whole model's, or one epoch's stage files
    of a multi-process run); its history and the epochs done (none: ``[], 0``)."""
    found = load_newest_model_state(directory, dm.num_stages)
    if found is None:
        return [], 0
    epoch, state = found
    load_model_state(dm, state)  # a checkpoint of another conversion raises ConfigError here
    restore_rng(state["rng"])
    return restore_history(state["history"]), epoch


class _Run:
    """What one call of :func:`fit` shares between its epochs."""

    def __init__(
        self,
        dm: StagedModel,
        loader: Iterable[Any],
        epochs: int,
        hooks: CallbackList,
        history: list[RunStats],
        progress: bool,
        validation: Iterable[Any] | None,
        checkpoint_dir: Path_ | None,
        keep: int,
    ) -> None:
        self.dm, self.loader, self.epochs, self.hooks, self.history = dm, loader, epochs, hooks, history
        self.progress, self.validation, self.checkpoint_dir, self.keep = progress, validation, checkpoint_dir, keep

    def epoch(self, epoch: int, train: Callable[[Bar], RunStats]) -> None:
        dm = self.dm
        dm.train()
        with open_bar(self.loader, epoch, self.epochs, self.progress) as bar:
            stats = train(bar)
            if stats.batches == 0:
                raise InputError(
                    f"the loader yielded no batches in epoch {epoch + 1}: fit() needs at least one batch per epoch"
                )
            stats.learning_rates = learning_rates(dm)
            end_epoch(list(dm.stages), dm.training_config, end_to_end=dm.end_to_end)
            _synchronize(dm)
            if self.validation is not None:
                stats.validation = validate(dm, self.validation)
            show_final(bar, stats)
        self.history.append(stats)
        self.hooks.on_epoch_end(dm, epoch, stats)
        if self.checkpoint_dir is not None:
            state = {**model_state(dm), "epoch": epoch + 1, "history": history_state(self.history), "rng": rng_state()}
            save_atomically(state, Path(self.checkpoint_dir) / checkpoint_name(epoch + 1))
            prune(self.checkpoint_dir, self.keep)

    def _step_log(self, epoch: int, batch: int, step: int, meters: list[StageMeter]) -> StepLog:
        losses = {f"stage{k}": m.last for k, m in enumerate(meters) if m.last is not None}
        return StepLog(epoch, batch, step, losses, learning_rates(self.dm))

    def pipelined(self, pipe: Pipeline, bar: Bar, epoch: int) -> RunStats:
        before, base = pipe.completed, self.dm.steps  # the pipeline stays open across epochs
        reported = before
        lr_stage = self.dm.stages[0]
        for batch in self.loader:
            args, kwargs, target = unpack_batch(batch)
            pipe.submit(*args, target=target, **kwargs)
            reported = self._report(pipe, epoch, before, base, reported)
            show(bar, pipe.completed - before, pipe.meters(), learning_rate(lr_stage))
        meters = pipe.meters()
        stats = pipe.drain()
        self._report(pipe, epoch, before, base, reported, meters)
        return stats

    def _report(
        self, pipe: Pipeline, epoch: int, before: int, base: int, reported: int, meters: list[StageMeter] | None = None
    ) -> int:
        """``on_step`` for the batches the last stage has finished since ``reported``."""
        if self.hooks.wants_steps:
            meters = meters or pipe.meters()
            for done in range(reported, pipe.completed):
                self.hooks.on_step(self.dm, self._step_log(epoch, done - before, base + done - before + 1, meters))
        return pipe.completed

    def sequential(self, bar: Bar, epoch: int) -> RunStats:
        dm = self.dm
        stages = list(dm.stages)
        meters = [StageMeter() for _ in stages]
        batches = samples = 0
        start = time.perf_counter()
        for batch in self.loader:
            args, kwargs, target = unpack_batch(batch)
            results: list[Any] = []
            losses = sequential.train_step(stages, dm.bind(args, kwargs), target, config=dm.training_config,
                                           end_to_end=dm.end_to_end, batch=dm.steps, results=results)  # fmt: skip
            dm.steps += 1
            for k, loss in enumerate(losses):
                if loss is None:
                    continue
                scored = correct_predictions(results[k].prediction, target) if k == len(stages) - 1 else None
                meters[k].add(loss, *(scored or (None, 0)))
            if self.hooks.wants_steps:
                self.hooks.on_step(dm, self._step_log(epoch, batches, dm.steps, meters))
            batches += 1
            samples += batch_size(args, kwargs, target)
            show(bar, batches, meters, learning_rate(stages[0]))
        return RunStats(
            losses={f"stage{k}": m.mean for k, m in enumerate(meters) if m.mean is not None},
            batches=batches,
            samples=samples,
            seconds=time.perf_counter() - start,
            accuracy=meters[-1].accuracy,
            peak_memory=peak_memory([s.device for s in stages]),
        )


def _synchronize(dm: StagedModel) -> None:
    """Let the pipeline's CUDA streams see the steps of :func:`end_epoch`, made on the caller's stream."""
    for device in {s.device for s in dm.stages if s.device.type == "cuda"}:
        torch.cuda.synchronize(device)
