"""Cross-batch pipelined training: one worker thread per stage, bounded channels between stages.

Stage ``k`` trains on batch ``b`` while stage ``k + 1`` trains on batch ``b - 1``. A worker reserves
room in the next stage's channel, takes a batch, runs forward, local loss, backward and its
optimizer step on it, then hands the detached message and the carry on (``channel.py``: at most
``depth`` batches wait between two stages, and a waiting stage holds none). So stage ``k`` sees
batch ``b`` after exactly the updates of batches ``0 .. b - 1``, as in
:func:`.sequential.train_step`, and pipelined training equals sequential training (bit for bit
with one intra-op thread).

Memory: every stage holds its own activations, and by default all stages may run their backward
pass at once, each with its transient buffers and fresh gradients, so the pipeline peaks at about the
sum of the stages' own peaks. ``backward_slots=k`` lets at most ``k`` stages of one device run backward
at once (the others wait, holding their forward activations; stages on other devices never wait for
them): less memory, less overlap on that device (see ``BackwardGate``). The default, ``"auto"``, is two
per CPU (4-stage vit_b_16: 0.88x bp's peak instead of up to 1.11x, at 0.97x the speed) and no limit on
a GPU (where a slot also waits for its stream: unmeasured, so not imposed).

Why threads: torch ops release the GIL, so stages on different devices (or CPU cores) compute
at the same time in one process, sharing parameters with the caller; small ops stay GIL-bound.
After a fault every worker discards batches but forwards the flush and stop markers, so the
caller re-raises the fault as :class:`~decouple.errors.StageError` and joins every thread.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from ..codegen.stage import Stage
from ..errors import ConfigError, StageError
from .backward_gate import BackwardGate, BackwardSlots, check_slots, slots_for
from .channel import FLUSH, STOP, Channel, Marker, serve
from .config import TrainingConfig
from .devices import (
    Streams,
    caller_ready,
    follow_caller,
    hand_back,
    needs_transfer,
    ready_event,
    receive,
    stage_context,
    streams_for,
)
from .stats import RunStats, StageMeter, batch_size, correct_predictions, peak_memory, reset_peak_memory
from .step import backward_local, forward_local, hand_on
from .timeline import Recorder, Timeline

__all__ = ["Batch", "Pipeline"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
Binder = Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any]]

_POLL = 0.05  # seconds between checks while the caller waits


@dataclass
class Batch:
    """A batch in flight: the message for the next stage, the carry, and the original target."""

    index: int
    message: dict[str, Any]
    carry: Any
    target: Any
    samples: int
    ready: Any = None  # a CUDA event recorded after the producing stage's step, or None


@dataclass
class _Fault:
    stage: int
    batch: int | None
    exc_info: ExcInfo


class _Faults:
    """The first fault of any worker; once set, every worker discards batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.first: _Fault | None = None
        self.stopped = threading.Event()
        self.raised = False

    def report(self, stage: int, batch: int | None, exc_info: Any) -> None:
        with self._lock:
            if self.first is None:
                self.first = _Fault(stage, batch, exc_info)
        self.stopped.set()


@dataclass
class _Worker:
    """What one stage's thread needs: the stage, its meter and recorder, its CUDA streams, the backward gate."""

    stage: Stage
    config: TrainingConfig
    meter: StageMeter
    recorder: Recorder
    last: bool
    streams: Streams | None = None
    gate: BackwardGate | None = None

    def context(self) -> AbstractContextManager[Any]:
        """The stage's device and compute stream for the whole worker loop (nothing on CPU)."""
        # A new thread runs MKL / OpenMP with their default thread count until ATen initialises it:
        # adopt the process's torch.set_num_threads now, or results and speed depend on the thread.
        torch.set_num_threads(torch.get_num_threads())
        return stage_context(self.stage.device, self.streams)

    def train(self, batch: Batch) -> Batch:
        """Forward, local loss, backward and step on one batch; the batch for the next stage."""
        stage, rec, b, config = self.stage, self.recorder, batch.index, self.config
        moving = needs_transfer((batch.message, batch.carry), stage.device, batch.ready)
        with rec.phase(b, "copy") if moving else nullcontext():
            message, carry = receive((batch.message, batch.carry), stage.device, self.streams, batch.ready)
        result = forward_local(stage, config, message, carry, phase=lambda name: rec.phase(b, name))
        local = result.result
        if local is not None:
            with self.gate.slot(self.streams) if self.gate is not None else nullcontext():
                backward_local(stage, config, local.loss, batch=b, phase=lambda name: rec.phase(b, name))
            carry = local.carry
        ready = ready_event(self.streams)
        if local is not None:
            scored = correct_predictions(local.prediction, batch.target) if self.last else None
            correct, total = scored or (None, 0)
            self.meter.add(local.loss, correct, total, event=ready)
        if self.last:
            return Batch(b, {}, None, None, batch.samples)
        return Batch(b, hand_on(result.message, config), hand_on(carry, config), batch.target, batch.samples, ready)


def _work(worker: _Worker, inbox: Channel, outbox: Channel, faults: _Faults) -> None:
    """The worker loop: take a batch, train on it, hand it on; after a fault, discard until stopped."""
    index = worker.stage.index

    def train(batch: Batch) -> Batch | None:
        if faults.stopped.is_set():
            return None  # discard: a stage has failed
        try:
            return worker.train(batch)
        except BaseException:  # every fault, KeyboardInterrupt too, goes to the caller
            faults.report(index, batch.index, sys.exc_info())
            return None

    try:
        with worker.context():
            serve(inbox, outbox, train)
    except BaseException:  # the device or stream could not be entered
        faults.report(index, None, sys.exc_info())
        serve(inbox, outbox, lambda batch: None)


class Pipeline:
    """Train stages on a stream of batches, one thread per stage (see the module docstring).

    Use as a context manager: ``submit`` batches, ``drain()`` to wait for them and get their
    statistics (the pipeline stays open for more); leaving the block finishes the submitted
    batches (or, after an error or KeyboardInterrupt, discards them) and joins every worker.
    ``on_sync(batches, timeline)`` is told at each drain and at the close how many more batches
    every stage has trained. ``config`` is how each stage steps (precision, accumulation, clipping,
    schedules; :mod:`.step`), the same as the sequential step. ``backward_slots``: at most this many
    stages of one device run backward at once (``None``: all may; ``"auto"``: two per CPU, no limit on
    GPUs), trading overlap for peak memory.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        bind: Binder,
        depth: int = 2,
        record: bool = False,
        on_sync: Callable[[int, Timeline | None], None] | None = None,
        config: TrainingConfig | None = None,
        backward_slots: BackwardSlots = "auto",
    ) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"depth must be an int >= 1 (batches each queue holds), got {depth!r}")
        check_slots(backward_slots)
        self.backward_slots = backward_slots
        self.stages = list(stages)
        self.config = config or TrainingConfig()
        self.depth = depth
        self.record = record
        self._bind = bind
        self._on_sync = on_sync
        self._reported = 0  # completed batches already passed to on_sync
        self._faults = _Faults()
        self._submitted = 0
        self.completed = 0  # batches the last stage has finished
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._since_drain: tuple[int, int, float | None] = (0, 0, None)  # batches, samples, first submit after a drain
        self._samples = 0
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.close(abort=True)
            return
        self.close()
        if not self._faults.raised:
            self._raise_fault()

    def start(self) -> None:
        """Start one worker thread per stage (``with`` does this)."""
        if self._started:
            return
        self._started = True
        self.origin = time.perf_counter()
        devices = [s.device for s in self.stages]
        reset_peak_memory(devices)
        gates = {str(d): BackwardGate(k) for d in devices if (k := slots_for(self.backward_slots, d)) is not None}
        self._workers = [
            _Worker(s, self.config, StageMeter(), Recorder(s.index, s.device, self.origin, enabled=self.record), k == len(self.stages) - 1,
                    streams_for(s.device), gates.get(str(s.device)))
            for k, s in enumerate(self.stages)
        ]  # fmt: skip
        for worker in self._workers:  # each stage starts after what this thread queued on its GPU
            follow_caller(worker.streams, worker.stage.device)
        self._queues = [Channel(self.depth) for _ in self.stages]
        self._done = Channel(None)
        outboxes = [*self._queues[1:], self._done]
        for worker, inbox, outbox in zip(self._workers, self._queues, outboxes):
            thread = threading.Thread(
                target=_work,
                args=(worker, inbox, outbox, self._faults),
                name=f"decouple-stage{worker.stage.index}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def close(self, *, abort: bool = False) -> None:
        """Finish (or with ``abort``, discard) the submitted batches and join every worker."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        stopping = False
        try:
            if abort:
                self._faults.stopped.set()
            self._put(STOP)
            stopping = True
            self._wait_for(STOP)
        finally:
            if stopping:  # a second interrupt before the stop marker went in leaves the daemon threads
                for thread in self._threads:
                    thread.join()
            self._sync()

    # -- batches ---------------------------------------------------------------------------
    def submit(self, *args: Any, target: Any, **kwargs: Any) -> None:
        """Queue one batch; returns as soon as stage 0 has room for it.

        Raises :class:`StageError` if a stage has failed on an earlier batch.
        """
        self._check_open()
        self._raise_fault()
        message = self._bind(args, kwargs)
        samples = batch_size(args, kwargs, target)
        if self._since_drain[2] is None:
            self._since_drain = (self._since_drain[0], self._since_drain[1], time.perf_counter())
        self._put(Batch(self._submitted, message, target, target, samples, caller_ready((message, target))))
        self._submitted += 1
        self._samples += samples
        self._take_finished()

    def drain(self) -> RunStats:
        """Wait until every submitted batch is trained; statistics of the batches since the last drain."""
        self._check_open()
        self._put(FLUSH)
        self._wait_for(FLUSH)
        self._sync()
        self._raise_fault()
        return self._stats()

    @property
    def submitted(self) -> int:
        return self._submitted

    def meters(self) -> list[StageMeter]:
        """Running meters of each stage (losses resolve as their computation completes)."""
        return [w.meter for w in self._workers]

    def timeline(self) -> Timeline | None:
        """The recorded events (``record=True``), else ``None``."""
        if not self.record or not self._started:
            return None
        return Timeline.merge([w.recorder for w in self._workers])

    # -- internals -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if not self._started:
            raise ConfigError("the pipeline is not running: use it as `with dm.pipeline() as pipe: ...`")
        if self._closed:
            raise ConfigError("this pipeline is closed: open a new one with dm.pipeline()")

    def _put(self, item: Any) -> None:
        inbox = self._queues[0]
        while not inbox.reserve(timeout=_POLL):
            self._take_finished()
        inbox.put(item)

    def _take_finished(self) -> None:
        """Count the batches the last stage has finished, without waiting."""
        while True:
            try:
                item = self._done.get(block=False)
            except queue.Empty:
                return
            assert isinstance(item, Batch), f"{item!r} reached the end while nobody waited for it"
            self.completed += 1

    def _wait_for(self, marker: Marker) -> None:
        """Count finished batches until ``marker`` has come out of the last stage."""
        while True:
            try:
                item = self._done.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is marker:
                return
            assert isinstance(item, Batch), f"{item!r} reached the end while waiting for {marker!r}"
            self.completed += 1

    def _sync(self) -> None:
        """Tell the owner how many more batches have been trained (and the timeline so far); this thread's
        GPU streams wait for the stages' work, so it reads parameters as the stages left them."""
        for worker in self._workers:
            hand_back(worker.streams, worker.stage.device)
        if self._on_sync is not None:
            self._on_sync(self.completed - self._reported, self.timeline())
        self._reported = self.completed

    def _raise_fault(self) -> None:
        """Raise the first fault as a StageError (again on every call: the workers discard everything)."""
        fault = self._faults.first
        if fault is None:
            return
        self._faults.raised = True
        _, exc, _ = fault.exc_info
        where = f"batch {fault.batch}" if fault.batch is not None else "start-up"
        device = self.stages[fault.stage].device
        raise StageError(
            f"stage {fault.stage} (on {device}) failed at {where}: {type(exc).__name__}: {exc}; every worker was "
            "stopped and the batches in flight were discarded",
            stage=fault.stage,
            batch=fault.batch,
        ) from exc

    def _stats(self) -> RunStats:
        batches0, samples0, start = self._since_drain
        now = time.perf_counter()
        start = now if start is None else start
        devices = [s.device for s in self.stages]
        meters = []
        for w in self._workers:
            w.meter.resolve()
            meters.append(w.meter)
            w.meter = StageMeter()
        stats = RunStats(
            losses={f"stage{k}": m.mean for k, m in enumerate(meters) if m.mean is not None},
            batches=self.completed - batches0,
            samples=self._samples - samples0,
            seconds=now - start,
            accuracy=meters[-1].accuracy,
            peak_memory=peak_memory(devices),
        )
        reset_peak_memory(devices)
        self._since_drain = (self.completed, self._samples, None)
        return stats
