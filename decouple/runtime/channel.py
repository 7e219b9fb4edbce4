"""The hand-off between two pipeline threads: a queue whose producer reserves room before it computes.

Why not a bounded ``queue.Queue``: its producer computes first and then blocks in ``put`` while
the queue is full, holding one more batch's activations than the queue's size, and a stage that
waits there keeps its own finished input alive too. Here a stage reserves a place downstream
*before* it takes its next input, so between two stages at most ``capacity`` batches exist that
the next stage has not taken, and a waiting stage holds no batch at all.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

__all__ = ["Channel"]


class Channel:
    """``reserve()`` room, compute, ``put()``; the consumer's ``get()`` frees the place. ``capacity=None``: unbounded."""

    def __init__(self, capacity: int | None) -> None:
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._room = threading.Semaphore(capacity) if capacity is not None else None

    def reserve(self, timeout: float | None = None) -> bool:
        """Wait for a free place (at most ``timeout`` seconds) and take it; whether one was taken."""
        return self._room is None or self._room.acquire(timeout=timeout)

    def cancel(self) -> None:
        """Give back a reserved place that will not be used."""
        if self._room is not None:
            self._room.release()

    def put(self, item: Any) -> None:
        """Add an item into a place taken with :meth:`reserve` (never blocks)."""
        self._items.put(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The oldest item, freeing its place; raises ``queue.Empty`` like ``queue.Queue.get``."""
        item = self._items.get(block, timeout)
        if self._room is not None:
            self._room.release()
        return item
