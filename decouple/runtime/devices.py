"""Handing a batch's values to the next stage's device: CUDA side streams, copies and events.

Why side streams: each stage computes on its own stream so stages sharing a GPU overlap, and a
copy stream moves values between devices with ``non_blocking`` copies while the compute stream
works. Correctness comes from events: the producer records one after its step, the copy stream
waits for it, the compute stream waits for the copy, and ``record_stream`` keeps the caching
allocator from reusing memory another stream still reads. The caller's own stream is a producer
too: inputs it made on the GPU carry an event (:func:`caller_ready`), a stage's streams start
after what the caller queued before the pipeline (:func:`follow_caller`), and the caller's stream
waits for each stage's last step when the pipeline closes (:func:`hand_back`). On CPU all of this
is a plain move.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from ..tree import move_tree, tensor_leaves

__all__ = [
    "Streams",
    "streams_for",
    "stage_context",
    "receive",
    "ready_event",
    "caller_ready",
    "follow_caller",
    "hand_back",
    "needs_transfer",
]


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

    ``ready``: a CUDA event the producer recorded after computing ``value`` (a list of them for
    inputs the caller made on several GPUs), or ``None``.
    """
    events = ready if isinstance(ready, list) else [] if ready is None else [ready]
    if streams is None:
        for event in events:
            event.synchronize()  # produced on a CUDA stream: wait before the host reads it
        return move_tree(value, device)
    for event in events:
        streams.copy.wait_event(event)
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


def caller_ready(value: Any) -> list[Any] | None:
    """Events on the calling thread's current stream of each GPU holding a tensor of ``value`` (``None``: none does).

    A stage computes on its own stream, which does not wait for the caller's: without these, a
    batch the caller has just copied or computed on the GPU could be read before it is written.
    """
    gpus = list(dict.fromkeys(x.device for x in tensor_leaves(value) if x.is_cuda))
    if not gpus:
        return None
    events = []
    for gpu in gpus:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(gpu))
        events.append(event)
    return events


def follow_caller(streams: Streams | None, device: torch.device) -> None:
    """The stage's streams run after what the calling thread has queued on ``device`` so far
    (parameters moved there, steps of ``train_step``, a loaded state)."""
    if streams is None:
        return
    current = torch.cuda.current_stream(device)
    streams.compute.wait_stream(current)
    streams.copy.wait_stream(current)


def hand_back(streams: Streams | None, device: torch.device) -> None:
    """The calling thread's stream on ``device`` waits for the stage's work so far (its last optimizer step),
    so what the caller runs next reads the updated parameters."""
    if streams is not None:
        torch.cuda.current_stream(device).wait_stream(streams.compute)
