"""Failures across ranks: a board in the process group's store, and errors that name the rank that failed first.

Why a failure board: a rank that fails writes a record to the process group's store and then
tears its process group down, so that its peers' pending sends, receives and collectives fail at
once instead of waiting for the timeout; they read the board, raise :class:`RankFailedError`
naming the rank that failed first, and tear down in turn. A rank that vanished without a record
(killed, out of memory) or hangs is reported from the failed send or receive; the process group's
timeout bounds every wait.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import torch.distributed as dist

from ...errors import RankFailedError
from .links import LinkError

__all__ = ["FailureBoard", "FailureRecord", "explain_link_error"]

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
