"""What the runtimes keep alive: a pipeline holds at most ``depth`` batches between two stages, and nothing when idle.

Counted with the garbage collector: each boundary of the test model has its own width, so the
live tensors of that width (distinct storages) are the messages held at that boundary.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import decouple

from .models import MLP

WIDTHS = [10, 13, 17, 11]  # boundaries: 13 (stage 0 -> 1) and 17 (stage 1 -> 2)
BATCH = 6  # no parameter or optimizer state is shaped (6, 13) or (6, 17)


def _held(width: int) -> int:
    """Distinct storages of live tensors shaped ``(BATCH, width)``: the messages held at that boundary."""
    gc.collect()
    shape = (BATCH, width)
    return len(
        {o.untyped_storage().data_ptr() for o in gc.get_objects() if type(o) is torch.Tensor and o.shape == shape}
    )


def _mlp_method(method: str, **kw: Any) -> decouple.DecoupledModel:
    splits = ["layers.0", "layers.1", "layers.2"] if method == "al" else ["layers.0", "layers.1"]
    return decouple.convert(MLP(WIDTHS), method=method, splits=splits, example_inputs=(torch.randn(2, 10),), **kw)


def _mlp(**kw: Any) -> decouple.DecoupledModel:
    return _mlp_method("scl", **kw)


def _batch(n: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 10), torch.arange(n) % 4


def _wait_until_steady(count: Any, seconds: float = 1.0, limit: float = 30.0) -> None:
    """Until ``count()`` has not changed for ``seconds`` (every thread of the pipeline is blocked)."""
    start = last_change = time.monotonic()
    seen = count()
    while time.monotonic() - last_change < seconds and time.monotonic() - start < limit:
        time.sleep(0.05)
        if count() != seen:
            seen, last_change = count(), time.monotonic()


@pytest.mark.timeout(60)
def test_an_idle_pipeline_holds_no_message() -> None:
    dm = _mlp()
    x, y = _batch()
    with dm.pipeline() as pipe:
        for _ in range(3):
            pipe.submit(x, target=y)
        pipe.drain()
        # every stage waits for its next batch: the last one's messages must be gone
        assert (_held(13), _held(17)) == (0, 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("depth", [1, 2])
def test_a_stalled_pipeline_holds_at_most_depth_batches_between_stages(depth: int) -> None:
    release = threading.Event()

    def stalled_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        release.wait(30)  # the last stage stalls on its first batch
        return F.cross_entropy(output, target)

    dm = _mlp(loss_fn=stalled_loss)
    x, y = _batch()
    with dm.pipeline(depth=depth) as pipe:
        submitter = threading.Thread(target=lambda: [pipe.submit(x, target=y) for _ in range(4 * depth + 6)])
        submitter.start()
        try:
            _wait_until_steady(lambda: pipe.submitted)
            # into the stalled last stage: the batch it works on plus `depth` queued; before it: `depth` queued,
            # and stage 1 waits for room before taking another batch (it computes nothing it could not hand on)
            assert _held(17) <= depth + 1
            assert _held(13) <= depth
            assert pipe.submitted == 3 * depth + 1  # one in the last stage, `depth` in each of the three queues
        finally:
            release.set()
            submitter.join()
        pipe.drain()


def _grads_alive(dm: decouple.DecoupledModel) -> list[str]:
    return [name for name, p in dm.named_parameters() if p.grad is not None]


@pytest.mark.parametrize("method", ["scl", "al", "early_exit", "bp"])
def test_no_gradient_outlives_its_optimizer_step(method: str) -> None:
    dm = _mlp_method(method)
    seen: list[list[str]] = []
    dm.stages[-1].module.register_forward_pre_hook(lambda module, args: seen.append(_grads_alive(dm)))
    x, y = _batch()
    for _ in range(2):
        dm.train_step(x, target=y)
        assert _grads_alive(dm) == []
    # when the last stage ran forward on the second batch, no gradient of the first was left
    # (bp: none at all; decoupled methods: the earlier stages had stepped on this batch already)
    assert seen[1] == []
    if method != "bp":
        with dm.pipeline() as pipe:
            for _ in range(3):
                pipe.submit(x, target=y)
            pipe.drain()
        assert _grads_alive(dm) == []
