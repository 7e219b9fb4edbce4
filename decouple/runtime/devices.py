"""Handing a batch's values to the next stage's device: CUDA side streams, copies and events.

Why side streams: each stage computes on its own stream so stages sharing a GPU overlap, and a
copy stream moves values between devices with ``non_blocking`` copies while the compute stream
works. Correctness comes from events: the producer records one after its step, the copy stream
waits for it, the compute stream waits for the copy, and ``record_stream`` keeps the caching
allocator from reusing memory another stream still reads. On CPU all of this is a plain move.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from ..tree import move_tree, tensor_leaves

__all__ = ["Streams", "streams_for", "stage_context", "receive", "ready_event", "needs_transfer"]


@dataclass(frozen=True)
class Streams:
    """A CUDA stage's compute stream and the stream its inputs are copied on."""

    compute: Any
    copy: Any


def streams_for(device: torch.device) -> Streams | None:
    """New side streams for a CUDA device; ``None`` elsewhere."""
    if device.type != "cuda":
        return None
    return Streams(torch.cuda.Stream(device=device), torch.cuda.Stream(device=device))


def stage_context(device: torch.device, streams: Streams | None) -> AbstractContextManager[Any]:
    """The device and compute stream a stage's thread runs under (nothing on CPU)."""
    if streams is None:
        return nullcontext()
    stack = ExitStack()
    stack.enter_context(torch.cuda.device(device))
    stack.enter_context(torch.cuda.stream(streams.compute))
    return stack


def needs_transfer(value: Any, device: torch.device, ready: Any) -> bool:
    """Whether receiving ``value`` on ``device`` copies or waits for another stream."""
    return ready is not None or any(x.device != device for x in tensor_leaves(value))


def receive(value: Any, device: torch.device, streams: Streams | None, ready: Any) -> Any:
    """``value`` on ``device``, safe to read on the current (compute) stream.

    ``ready``: a CUDA event the producer recorded after computing ``value``, or ``None``.
    """
    if streams is None:
        if ready is not None:
            ready.synchronize()  # produced on a CUDA stream: wait before the host reads it
        return move_tree(value, device)
    if ready is not None:
        streams.copy.wait_event(ready)
    with torch.cuda.stream(streams.copy):
        moved = move_tree(value, device, non_blocking=True)
    for x in tensor_leaves(value):
        if x.is_cuda:
            x.record_stream(streams.copy)  # the source stays allocated until the copy has run
    streams.compute.wait_stream(streams.copy)
    for x in tensor_leaves(moved):
        if x.is_cuda:
            x.record_stream(streams.compute)
    return moved


def ready_event(streams: Streams | None) -> Any:
    """An event on the compute stream marking everything queued so far (``None`` on CPU)."""
    if streams is None:
        return None
    event = torch.cuda.Event()
    event.record(streams.compute)
    return event
