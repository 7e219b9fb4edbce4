"""The CUDA paths of the pipeline: each stage's streams are ordered against the caller's stream.

The tests marked ``cuda`` skip cleanly without a CUDA device (``benchmarks/gpu_check.sh`` runs
them on a GPU). Each makes a race likely by keeping one stream busy with ``torch.cuda._sleep``
and checks that pipelined training still equals sequential training; the last tests check the
same helpers' CPU behaviour, which runs everywhere.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import decouple
from decouple.runtime.devices import caller_ready, follow_caller, hand_back, receive

from .models import MLP

SLEEP = 50_000_000  # GPU clock cycles: tens of milliseconds on a current GPU
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _mlp(**kw: Any) -> decouple.DecoupledModel:
    torch.manual_seed(0)
    return decouple.convert(MLP([10, 64, 64, 32]), method="scl", splits=["layers.0", "layers.1"],
                            example_inputs=(torch.randn(2, 10),), devices=["cuda:0"] * 3, **kw)  # fmt: skip


def _batches(device: str = "cuda:0", n: int = 6) -> Batches:
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 10, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]
    return [(x.to(device), y.to(device)) for x, y in batches]


def _assert_same_parameters(a: decouple.DecoupledModel, b: decouple.DecoupledModel) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


class _SlowBackward(torch.autograd.Function):
    """Identity whose backward keeps the stream busy, so the optimizer step after it lands late."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        torch.cuda._sleep(SLEEP)  # on the stream the forward ran on: the last stage's
        return grad


def _slow_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_SlowBackward.apply(output), target)


@pytest.mark.cuda
@pytest.mark.timeout(120)
def test_inputs_the_caller_is_still_writing_are_waited_for() -> None:
    data = _batches()
    reference, piped = _mlp(), _mlp()
    for x, y in data:
        reference.train_step(x, target=y)
    torch.cuda.synchronize()
    with piped.pipeline() as pipe:
        for x, y in data:
            torch.cuda._sleep(SLEEP)  # the caller's stream is busy: the copy below is written late
            pipe.submit(x * 1.0, target=y.clone())
        pipe.drain()
    _assert_same_parameters(reference, piped)


@pytest.mark.cuda
@pytest.mark.timeout(120)
def test_the_pipeline_starts_after_what_the_caller_queued() -> None:
    reference, piped = _mlp(), _mlp()
    for dm in (reference, piped):
        torch.cuda.synchronize()
        with torch.no_grad():
            torch.cuda._sleep(SLEEP)  # the caller's update below lands late on its stream
            for p in dm.parameters():
                p.mul_(0.5)
    for x, y in _batches():
        reference.train_step(x, target=y)
    with piped.pipeline() as pipe:
        for x, y in _batches("cpu"):  # inputs from the host carry no event of the caller's stream
            pipe.submit(x, target=y)
        pipe.drain()
    _assert_same_parameters(reference, piped)


@pytest.mark.cuda
@pytest.mark.timeout(120)
def test_the_caller_reads_the_last_update_after_the_block() -> None:
    data = _batches()
    reference, piped = _mlp(loss_fn=_slow_loss), _mlp(loss_fn=_slow_loss)
    for x, y in data:
        reference.train_step(x, target=y)
    with piped.pipeline() as pipe:
        for x, y in data:
            pipe.submit(x, target=y)
    # no drain: leaving the block must still order this thread's stream after the stages' last steps
    after = [p.detach().clone() for p in piped.parameters()]  # runs on this thread's stream
    for (name, expected), got in zip(reference.named_parameters(), after):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.cuda
@pytest.mark.timeout(120)
def test_peak_memory_is_reset_when_the_pipeline_starts_and_at_each_drain() -> None:
    dm, data, gib = _mlp(), _batches(), 2**30

    def spike() -> None:
        torch.empty(gib, dtype=torch.uint8, device="cuda:0")  # allocated and freed at once

    spike()  # before the pipeline: its own measurement must not see it
    base = torch.cuda.memory_allocated("cuda:0")
    with dm.pipeline() as pipe:
        peaks = []
        for k, (x, y) in enumerate(data):
            pipe.submit(x, target=y)
            if k % 2:
                peaks.append(pipe.drain().peak_memory)
                if k == 1:
                    spike()  # between the first and the second drain
    assert [len(p) for p in peaks] == [3, 3, 3]  # one number per stage (they share the device)
    first, second, third = (p[0] for p in peaks)
    assert first < base + gib <= second
    assert third < base + gib


# -- the same helpers on the CPU -----------------------------------------------------------
class _Event:
    def __init__(self) -> None:
        self.waited = False

    def synchronize(self) -> None:
        self.waited = True


def test_a_cpu_stage_waits_on_every_event_of_its_inputs() -> None:
    events = [_Event(), _Event()]
    value = {"x": torch.ones(2)}
    assert receive(value, torch.device("cpu"), None, events) == value
    assert all(e.waited for e in events)
    single = _Event()
    receive(value, torch.device("cpu"), None, single)
    assert single.waited


def test_cpu_inputs_need_no_event_and_cpu_stages_no_stream_ordering() -> None:
    assert caller_ready(({"x": torch.ones(2)}, torch.zeros(2, dtype=torch.long))) is None
    follow_caller(None, torch.device("cpu"))  # no streams, nothing to order (and no CUDA call)
    hand_back(None, torch.device("cpu"))
