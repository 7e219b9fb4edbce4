"""How many stages of one device may run their backward pass at once: the pipeline's memory bound.

Each pipeline stage peaks in its own backward pass (its activations, fresh gradients and transient
buffers); with no bound, stages that happen to be mid-backward together add those peaks up. A
:class:`BackwardGate` per device holds the stages beyond ``slots`` after their forward pass and local
loss until one finishes its step. ``backward_slots="auto"`` is two per CPU (measured on a 4-stage
vit_b_16: 0.88x bp's peak instead of up to 1.11x, at 0.97x the throughput) and no limit on a GPU,
where it is unmeasured.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from ..errors import ConfigError
from .devices import Streams

__all__ = ["BackwardGate", "BackwardSlots", "check_slots", "slots_for", "AUTO_CPU_SLOTS"]


class BackwardGate:
    """At most ``slots`` stages of one device in their backward pass (and optimizer step) at once.

    A stage waits for a slot after its forward pass and local loss, and gives it back when its
    step is done and, on a GPU, has finished on its stream (so that its transient buffers are
    free before another stage's backward begins). Waiting holds no lock another stage needs:
    the stage in backward never waits for a stage that waits here.
    """

    def __init__(self, slots: int) -> None:
        self._semaphore = threading.BoundedSemaphore(slots)

    @contextmanager
    def slot(self, streams: Streams | None) -> Iterator[None]:
        self._semaphore.acquire()
        try:
            yield
            if streams is not None:
                torch.cuda.current_stream().synchronize()
        finally:
            self._semaphore.release()


BackwardSlots = int | None | Literal["auto"]

#: ``backward_slots="auto"`` on a CPU: two stages in backward at once
AUTO_CPU_SLOTS = 2


def check_slots(backward_slots: object) -> None:
    """Raise a ConfigError naming the accepted values unless ``backward_slots`` is one of them."""
    if backward_slots is None or backward_slots == "auto":
        return
    if isinstance(backward_slots, bool) or not isinstance(backward_slots, int) or backward_slots < 1:
        raise ConfigError(
            f"backward_slots must be an int >= 1 (stages of one device in their backward pass at once), None "
            f"(no limit) or 'auto' (2 per CPU, no limit on GPUs), got {backward_slots!r}"
        )


def slots_for(backward_slots: BackwardSlots, device: torch.device | str) -> int | None:
    """How many stages of ``device`` may run backward at once (``None``: no limit)."""
    if backward_slots == "auto":
        return AUTO_CPU_SLOTS if torch.device(device).type == "cpu" else None
    return backward_slots
