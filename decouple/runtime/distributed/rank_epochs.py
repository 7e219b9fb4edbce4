"""What ``StageTrainer.fit`` does at the end of each epoch on a rank, and how the ranks agree where to resume.

Validation: rank 0 gathers every stage's weights (module and head) after the epoch and runs the
validation loader through the inference path in its own process, exactly as single-process
``fit`` does (``runtime/validation.py``); the metrics are broadcast, so every rank's history holds
them. Why not a pipeline of inference through the ranks: the gathered model is what one deploys
and what single-process validation measures, the per-exit accuracies come for free, and the cost
(one gather of the weights per epoch) is small beside an epoch.

Logs: each rank writes ``stage{k}.epochs.csv`` / ``stage{k}.steps.csv`` (and TensorBoard events
under ``stage{k}.tensorboard`` when installed) with its stage's loss and learning rate; the
validation metrics appear in every rank's rows. Checkpoints: each rank writes
``epoch{e}.stage{k}.pt`` atomically (its stage's state, the epoch, its history and its random
generators) and keeps the newest ``keep``. Resuming, the ranks take the newest epoch that every
rank can read (its own stage file, or a whole-model ``epoch{e}.pt`` written by single-process
``fit``), so a distributed run resumes in one process and back. With data-parallel replicas, replica
0 of each stage logs and writes (the replicas of a stage hold the same state), and every replica
resumes from the same file, so a run resumes with another replica count too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...codegen.stage import Stage
from ...errors import ConfigError
from ..callbacks import CallbackList, StepLog
from ..checkpoints import checkpoint_name, list_checkpoints, load_newest, prune, restore_rng, rng_state, save_atomically
from ..loggers import loggers_for
from ..protocol import StagedModel
from ..state import load_stage_checkpoint, stage_checkpoint
from ..stats import RunStats
from ..step import learning_rate
from ..validation import validate
from .rank_loop import StageLog, StepRecord

__all__ = ["RankEpochs"]

Gather = Callable[[Any], list[Any]]


class RankEpochs:
    """One rank's end-of-epoch work for :meth:`StageTrainer.fit` (see the module docstring).

    ``all_gather(value)``: every rank's value; ``load_all_stages()``: every stage's weights into
    this rank's model (rank 0), as collectives the trainer guards.
    """

    def __init__(
        self,
        dm: StagedModel,
        stage: Stage,
        *,
        validation: Iterable[Any] | None,
        log_dir: str | os.PathLike[str] | None,
        checkpoint_dir: str | os.PathLike[str] | None,
        keep: int,
        all_gather: Gather,
        load_all_stages: Callable[[], object],
        writes: bool = True,
    ) -> None:
        self.dm, self.stage = dm, stage
        self.writes = writes  # this rank logs and checkpoints its stage (replica 0 of each stage does)
        self.validation, self.checkpoint_dir, self.keep = validation, checkpoint_dir, keep
        self.all_gather, self.load_all_stages = all_gather, load_all_stages
        self.hooks = CallbackList(loggers_for(log_dir if writes else None, prefix=f"stage{stage.index}."))
        self.validating = False  # rank 0's choice, agreed by every rank in start()
        self.metrics: list[dict[str, float]] = []
        self.base_steps = 0
        self.tick = time.perf_counter()

    def start(self, *, resume: bool, epochs: int) -> tuple[int, StageLog]:
        """Agree on validation and resuming with the other ranks; the first epoch to train and the log so far."""
        flags = self.all_gather((self.validation is not None, resume, self.checkpoint_dir is not None))
        self.validating = bool(flags[0][0])
        if len({f[1:] for f in flags}) > 1:
            raise ConfigError(
                f"the ranks disagree on resume / checkpoint_dir ({[f[1:] for f in flags]}); pass the same "
                "resume= and a checkpoint_dir= on every rank"
            )
        first, log = (self._resume() if resume else None) or (0, StageLog(self.stage.index))
        self.base_steps = self.dm.steps - log.batches
        self.hooks.on_fit_start(self.dm, first, epochs)
        self.tick = time.perf_counter()
        return first, log

    def _resume(self) -> tuple[int, StageLog] | None:
        """Load the newest epoch every rank can read; ``None`` when there is none."""
        assert self.checkpoint_dir is not None, "resume=True needs checkpoint_dir (checked by the trainer)"
        mine = dict(list_checkpoints(self.checkpoint_dir))  # whole models from single-process fit
        mine.update(dict(list_checkpoints(self.checkpoint_dir, self.stage.index)))
        common = set.intersection(*(set(epochs) for epochs in self.all_gather(sorted(mine))))
        for epoch in sorted(common, reverse=True):
            found = load_newest([(epoch, mine[epoch])], map_location=self.stage.device)
            if all(self.all_gather(found is not None)):
                assert found is not None
                state = found[1]
                load_stage_checkpoint(self.dm, self.stage, state)
                restore_rng(state["rng"])
                self.metrics = [dict(m) for m in state.get("validation", [])]
                return epoch, _restored_log(state, self.stage.index)
        return None

    def step(self, record: StepRecord, steps_before_epoch: int) -> None:
        """The loggers' per-step hook, from the rank loop's ``on_step``."""
        if self.hooks.wants_steps and record.loss is not None:
            key = f"stage{record.stage}"
            rate = learning_rate(self.stage)
            log = StepLog(record.epoch, record.batch, steps_before_epoch + record.batch + 1, {key: record.loss},
                          {key: rate} if rate is not None else {})  # fmt: skip
            self.hooks.on_step(self.dm, log)

    def end(self, epoch: int, log: StageLog) -> None:
        """After this rank's part of ``epoch``: validate (rank 0, gathered), log, checkpoint."""
        self.dm.steps = self.base_steps + log.batches
        metrics: dict[str, float] = {}
        if self.validating:
            self.load_all_stages()
            metrics = validate(self.dm, self.validation) if self.validation is not None else {}
            metrics = self.all_gather(metrics)[0]  # rank 0's
            self.metrics.append(metrics)
        now = time.perf_counter()
        key = f"stage{self.stage.index}"
        mean, rate = log.epoch_losses[-1], learning_rate(self.stage)
        stats = RunStats({key: mean} if mean is not None else {}, log.epoch_batches[-1], 0, now - self.tick,
                         learning_rates={key: rate} if rate is not None else {}, validation=metrics)  # fmt: skip
        self.tick = now
        self.hooks.on_epoch_end(self.dm, epoch, stats)
        if self.checkpoint_dir is not None and self.writes:
            state = {**stage_checkpoint(self.dm, self.stage), "epoch": epoch + 1, "rng": rng_state(),
                     "log": asdict(log), "validation": self.metrics}  # fmt: skip
            save_atomically(state, Path(self.checkpoint_dir) / checkpoint_name(epoch + 1, self.stage.index))
            prune(self.checkpoint_dir, self.keep, self.stage.index)

    def finish(self, history: Any) -> None:
        self.hooks.on_fit_end(self.dm, history)


def _restored_log(state: dict[str, Any], stage: int) -> StageLog:
    """The rank's log up to the checkpoint (a whole-model checkpoint of single-process ``fit`` holds its history)."""
    if "log" in state:
        saved = state["log"]
        return StageLog(stage, list(saved["epoch_losses"]), int(saved["batches"]), 0.0, list(saved["epoch_batches"]))
    history = state.get("history", [])
    losses = [entry["losses"].get(f"stage{stage}") for entry in history]
    batches = [int(entry["batches"]) for entry in history]
    return StageLog(stage, losses, sum(batches), 0.0, batches)
