"""Multi-process stage loop: one stage per rank, only forward messages between ranks.

Rank ``k`` trains stage ``k`` as :func:`decouple.runtime.sequential.train_step` does, through the
one local step of :mod:`decouple.runtime.step`: forward, local loss, backward, its own optimizer
step on each completed accumulation group. Its detached message and carry go to rank ``k + 1``
and nothing comes back, so after any number of batches every rank holds the parameters of the
sequential run. The message is posted before the backward so that rank ``k + 1`` starts on a
batch while rank ``k`` still updates.

With data-parallel replicas (:mod:`.mesh`), the source rank splits each global batch into one
shard per replica and sends each other replica's stage 0 its shard; every stage averages its
gradients over its replicas (:class:`.replicas.GradientAverager`, the step's ``sync``) before each
optimizer step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...codegen.stage import Stage
from ...errors import StageError
from ...tree import move_tree
from ..config import TrainingConfig
from ..step import backward_local, end_epoch, forward_local, hand_on
from .links import Kind, Link, LinkError
from .replicas import GradientAverager, shard

__all__ = ["StageLog", "StepRecord", "StageRunner"]


@dataclass(frozen=True)
class StepRecord:
    """One batch on one rank, as passed to an ``on_step`` callback."""

    stage: int
    epoch: int
    batch: int
    loss: float | None
    replica: int = 0


@dataclass
class StageLog:
    """What one rank's stage did in one run: mean local loss per epoch, batches, wall time."""

    stage: int
    epoch_losses: list[float | None] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0
    epoch_batches: list[int] = field(default_factory=list)


class StageRunner:
    """Trains one stage on the stream of batches: read from a loader (rank 0) or from the inbox.

    ``shards``: on the source rank, links to stage 0 of every other replica, in replica order
    (each receives its shard of every batch); ``averager``: averages gradients over the stage's
    replicas before each optimizer step. ``position`` is ``(epoch, batch)`` of the batch being
    trained, for error messages, and ``None`` before the first batch and after the stream ends.
    """

    def __init__(
        self,
        stage: Stage,
        *,
        inbox: Link | None,
        outbox: Link | None,
        shards: Sequence[Link] = (),
        averager: GradientAverager | None = None,
        replica: int = 0,
        on_step: Callable[[StepRecord], None] | None = None,
        config: TrainingConfig | None = None,
        on_epoch_end: Callable[[int, StageLog], None] | None = None,
    ) -> None:
        self.stage = stage
        self.config = config or TrainingConfig()
        self.on_epoch_end = on_epoch_end
        self.inbox = inbox
        self.outbox = outbox
        self.shards = list(shards)
        self.averager = averager
        self.replica = replica
        self.on_step = on_step
        self.position: tuple[int, int] | None = None

    def run_source(
        self,
        epochs: int,
        batches: Callable[[int], Iterable[tuple[dict[str, Any], Any]]],
        *,
        first_epoch: int = 0,
        log: StageLog | None = None,
    ) -> StageLog:
        """Rank 0: train on ``batches(epoch)`` for epochs ``first_epoch .. epochs - 1`` and forward the stream.

        ``log``: the log of the epochs before ``first_epoch`` (resuming), continued."""
        log = log or StageLog(self.stage.index)
        start = time.perf_counter()
        for epoch in range(first_epoch, epochs):
            total, count = None, 0
            for b, (message, carry) in enumerate(batches(epoch)):
                self.position = (epoch, b)
                if self.shards:
                    (message, carry), *others = shard(message, carry, 1 + len(self.shards), batch=b)
                    for link, part in zip(self.shards, others):
                        link.send(part)
                total, count = self._accumulate(total, count, self._train(message, carry))
            self._close_epoch(log, total, count, epoch)
        return self._stop(log, start)

    def run_follower(self, *, first_epoch: int = 0, log: StageLog | None = None) -> StageLog:
        """Ranks after 0: train on every message from the inbox until the stream stops."""
        assert self.inbox is not None, "a follower has an inbox"
        log = log or StageLog(self.stage.index)
        start = time.perf_counter()
        epoch, b, total, count = first_epoch, 0, None, 0
        while True:
            self.position = (epoch, b)  # the batch it waits for, then trains
            kind, payload = self.inbox.recv()
            if kind == Kind.STOP:
                break
            if kind == Kind.EPOCH_END:
                self._close_epoch(log, total, count, epoch)
                epoch, b, total, count = epoch + 1, 0, None, 0
                continue
            message, carry = payload
            total, count = self._accumulate(total, count, self._train(message, carry))
            b += 1
        return self._stop(log, start)

    # -- one batch --------------------------------------------------------------------------
    def _train(self, message: dict[str, Any], carry: Any) -> torch.Tensor | None:
        stage, config = self.stage, self.config
        batch = self.position[1] if self.position is not None else None
        with torch.no_grad():
            message = move_tree(message, stage.device)
            carry = move_tree(carry, stage.device)
        try:
            result = forward_local(stage, config, message, carry)
        except Exception as exc:
            raise self._stage_error(exc) from exc
        local = result.result
        if self.outbox is not None:
            self.outbox.send(
                (hand_on(result.message, config), hand_on(local.carry if local is not None else carry, config))
            )
        if local is None:
            loss = None
        else:
            try:
                backward_local(stage, config, local.loss, batch=batch, sync=self.averager)
            except LinkError:  # a replica peer is gone: the trainer explains it
                raise
            except Exception as exc:
                raise self._stage_error(exc) from exc
            loss = local.loss.detach()
        if self.on_step is not None:
            assert self.position is not None
            epoch, b = self.position
            self.on_step(StepRecord(stage.index, epoch, b, None if loss is None else float(loss), self.replica))
        return loss

    def _stage_error(self, exc: Exception) -> StageError:
        assert self.position is not None
        epoch, b = self.position
        return StageError(
            f"stage {self.stage.index} failed on batch {b} of epoch {epoch}: {type(exc).__name__}: {exc}",
            stage=self.stage.index,
            batch=b,
        )

    # -- bookkeeping ------------------------------------------------------------------------
    @staticmethod
    def _accumulate(
        total: torch.Tensor | None, count: int, loss: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, int]:
        if loss is None:
            return total, count + 1
        return (loss if total is None else total + loss), count + 1

    def _close_epoch(self, log: StageLog, total: torch.Tensor | None, count: int, epoch: int) -> None:
        mean = None if total is None or count == 0 else float(total) / count
        log.epoch_losses.append(mean)
        log.epoch_batches.append(count)
        log.batches += count
        try:
            end_epoch([self.stage], self.config, sync=self.averager)  # the last partial group, the per-epoch scheduler
        except LinkError:
            raise
        except Exception as exc:
            raise self._stage_error(exc) from exc
        self._forward_kind(Kind.EPOCH_END)
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch, log)

    def _stop(self, log: StageLog, start: float) -> StageLog:
        self._forward_kind(Kind.STOP)
        for link in self._links():
            link.flush()
        self.position = None
        log.seconds = time.perf_counter() - start
        return log

    def _forward_kind(self, kind: Kind) -> None:
        for link in self._links():
            link.send_kind(kind)

    def _links(self) -> list[Link]:
        """Where this rank sends: the other replicas' shards (source rank) and the next stage."""
        return [*self.shards, *([self.outbox] if self.outbox is not None else [])]
