"""How items travel between pipeline threads: channels, the control markers, and a worker's serve loop.

Why not a bounded ``queue.Queue``: its producer computes first and then blocks in ``put`` while
the queue is full, holding one more batch's activations than the queue's size, and a stage that
waits there keeps its own finished input alive too. Here a stage reserves a place downstream
*before* it takes its next input (:func:`serve`), so between two stages at most ``capacity``
batches exist that the next stage has not taken, and a waiting stage holds no batch at all.

Why markers flow through the channels: after a fault every worker discards batches but forwards
the flush and stop markers, so no channel stays full and no reservation waits forever.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Channel", "Marker", "FLUSH", "STOP", "serve"]


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


class Marker:
    """A control item that every worker forwards, even after a fault."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


FLUSH = Marker("flush")  # every batch submitted before it is done once it reaches the end
STOP = Marker("stop")  # the worker forwards it and exits


def serve(inbox: Channel, outbox: Channel, handle: Callable[[Any], Any]) -> None:
    """Hand every item but markers to ``handle``; forward what it returns (``None``: nothing) and every marker,
    until the stop marker has passed."""
    while _serve_one(inbox, outbox, handle):
        pass


def _serve_one(inbox: Channel, outbox: Channel, handle: Callable[[Any], Any]) -> bool:
    """Reserve room downstream, then take one item and forward it (a marker) or what ``handle`` makes of it.

    Returns ``False`` once the stop marker has passed. The trained input and the output handed on
    are this frame's locals, so they are let go before the stage waits again: a waiting stage holds
    no batch, and never one it could not hand on.
    """
    outbox.reserve()
    item = inbox.get()
    if isinstance(item, Marker):
        outbox.put(item)
        return item is not STOP
    handed = handle(item)
    if handed is None:
        outbox.cancel()
    else:
        outbox.put(handed)
    return True
