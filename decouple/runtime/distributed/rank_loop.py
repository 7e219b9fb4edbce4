"""Multi-process stage loop: one stage per rank, only forward messages between ranks.

Rank ``k`` trains stage ``k`` as :func:`decouple.runtime.sequential.train_step` does, through the
same local step (:mod:`decouple.runtime.step`: precision, accumulation, clipping, schedules). Its detached message and carry go to rank
``k + 1`` and nothing comes back, so after any number of batches every rank holds the
parameters of the sequential run. The message is posted before the backward so that rank
``k + 1`` starts on a batch while rank ``k`` still updates.

Why a failure board: a rank that fails writes a record to the process group's store and then
tears its process group down, so that its neighbours' pending sends and receives fail at once
instead of waiting for the timeout; they read the board, raise :class:`RankFailedError` naming
the rank that failed first, and tear down in turn. A rank that vanished without a record (killed,
out of memory) or hangs is reported from the failed send or receive; the process group's timeout
bounds every wait.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from ...codegen.stage import Stage
from ...errors import RankFailedError, StageError
from ...tree import move_tree
from ..config import TrainingConfig
from ..step import backward_local, end_epoch, forward_local, hand_on
from .links import Kind, Link, LinkError

__all__ = ["FailureBoard", "FailureRecord", "StageLog", "StepRecord", "StageRunner", "explain_link_error"]

_PREFIX = "decouple/failure/"


@dataclass(frozen=True)
class FailureRecord:
    """One rank's failure: ``origin`` when it failed itself, not because a peer did."""

    rank: int
    origin: bool
    text: str
    cause: int | None = None  # for a secondary failure, the peer whose loss this rank noticed


class FailureBoard:
    """Failure records in a store shared by all ranks, in the order they were written."""

    def __init__(self, store: dist.Store, rank: int) -> None:
        self.store = store
        self.rank = rank

    def report(self, text: str, *, origin: bool, cause: int | None = None) -> None:
        """Record this rank's failure (once per rank); never raises, the store may be gone."""
        own = f"{_PREFIX}rank{self.rank}"
        try:
            if self.store.check([own]):
                return
            seq = self.store.add(f"{_PREFIX}count", 1)
            self.store.set(f"{_PREFIX}{seq}", json.dumps(asdict(FailureRecord(self.rank, origin, text, cause))))
            self.store.set(own, str(seq))
        except Exception:  # reporting is best effort; the link error still tells
            return

    def records(self) -> list[FailureRecord]:
        """Every record written so far (an unreachable store reads as none)."""
        try:
            count = self.store.add(f"{_PREFIX}count", 0)
            keys = [f"{_PREFIX}{i}" for i in range(1, count + 1)]
            return [FailureRecord(**json.loads(self.store.get(k))) for k in keys if self.store.check([k])]
        except Exception:  # the store died with the rank that hosted it
            return []

    def first_failure(self, wait: float = 2.0) -> FailureRecord | None:
        """The first origin record, waiting up to ``wait`` seconds for one to appear."""
        deadline = time.monotonic() + wait
        while True:
            found = self.records()
            origins = [r for r in found if r.origin]
            if origins:
                return origins[0]
            if time.monotonic() >= deadline:
                return found[0] if found else None
            time.sleep(0.05)


def explain_link_error(
    error: LinkError, board: FailureBoard | None, *, rank: int, where: str, batch: int | None = None
) -> RankFailedError:
    """Turn a failed send or receive into an error naming the rank that failed first and why."""
    record = board.first_failure() if board is not None else None
    peer = "its peers" if error.peer is None else f"rank {error.peer}"
    if record is not None and record.origin:
        why = f"rank {record.rank} failed: {record.text}"
        failed: int | None = record.rank
    elif record is not None:
        failed = record.cause
        why = f"rank {record.rank} reported: {record.text}"
    elif "timed out" in str(error).lower() or "timeout" in str(error).lower():
        failed = error.peer
        why = (
            f"{peer} did not answer within the process group's timeout: it hangs, or one batch takes it "
            f"longer than the timeout (raise timeout=). ({error})"
        )
    else:
        failed = error.peer
        why = (
            f"{peer} closed its connection without reporting an error: it was killed, ran out of memory or "
            f"exited early. ({error})"
        )
    return RankFailedError(f"rank {rank} stopped {where} because {why}", stage=rank, batch=batch, failed_rank=failed)


@dataclass(frozen=True)
class StepRecord:
    """One batch on one rank, as passed to an ``on_step`` callback."""

    stage: int
    epoch: int
    batch: int
    loss: float | None


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

    ``position`` is ``(epoch, batch)`` of the batch being trained, for error messages, and
    ``None`` before the first batch and after the stream ends.
    """

    def __init__(
        self,
        stage: Stage,
        *,
        inbox: Link | None,
        outbox: Link | None,
        on_step: Callable[[StepRecord], None] | None = None,
        config: TrainingConfig | None = None,
        on_epoch_end: Callable[[int, StageLog], None] | None = None,
    ) -> None:
        self.stage = stage
        self.config = config or TrainingConfig()
        self.on_epoch_end = on_epoch_end
        self.inbox = inbox
        self.outbox = outbox
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
                backward_local(stage, config, local.loss, batch=batch)
            except Exception as exc:
                raise self._stage_error(exc) from exc
            loss = local.loss.detach()
        if self.on_step is not None:
            assert self.position is not None
            epoch, b = self.position
            self.on_step(StepRecord(stage.index, epoch, b, None if loss is None else float(loss)))
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
            end_epoch([self.stage], self.config)  # the last partial group, the per-epoch scheduler
        except Exception as exc:
            raise self._stage_error(exc) from exc
        self._forward_kind(Kind.EPOCH_END)
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch, log)

    def _stop(self, log: StageLog, start: float) -> StageLog:
        self._forward_kind(Kind.STOP)
        if self.outbox is not None:
            self.outbox.flush()
        self.position = None
        log.seconds = time.perf_counter() - start
        return log

    def _forward_kind(self, kind: Kind) -> None:
        if self.outbox is not None:
            self.outbox.send_kind(kind)
