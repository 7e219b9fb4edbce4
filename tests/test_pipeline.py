"""The pipelined runtime: it trains exactly as sequential train_step does, and it fails cleanly."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st

import decouple
from decouple.runtime.schedule import clock_cycles, dependencies, ideal_ticks, schedule_violations

from .helpers import one_thread, registered_methods, small_options
from .models import MLP, ResCNN

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _cnn(method: str = "scl", seed: int = 0, **kw: Any) -> decouple.DecoupledModel:
    torch.manual_seed(seed)
    model = ResCNN(channels=4, blocks=2, num_classes=3)
    return decouple.convert(
        model, method=method, splits=["blocks.0", "blocks.1"], example_inputs=(torch.randn(2, 3, 8, 8),), **kw
    )


def _mlp(method: str = "scl", seed: int = 0, **kw: Any) -> decouple.DecoupledModel:
    torch.manual_seed(seed)
    return decouple.convert(
        MLP([10, 16, 16, 16], num_classes=4),
        method=method,
        splits=["layers.0", "layers.1"],
        example_inputs=(torch.randn(2, 10),),
        **kw,
    )


def _images(sizes: list[int], classes: int = 3) -> Batches:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)) for n in sizes]


def _vectors(sizes: list[int], classes: int = 4) -> Batches:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(n, 10, generator=g), torch.randint(0, classes, (n,), generator=g)) for n in sizes]


def _state(dm: decouple.DecoupledModel) -> list[Any]:
    """Every parameter, buffer and optimizer state value, flattened in a fixed order."""
    return pytree.tree_leaves(dm.state_dict())


def assert_same_training_state(a: decouple.DecoupledModel, b: decouple.DecoupledModel) -> None:
    left, right = _state(a), _state(b)
    assert len(left) == len(right)
    for x, y in zip(left, right):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y)
        else:
            assert x == y


def _sequential(dm: decouple.DecoupledModel, data: Batches) -> list[dict[str, float]]:
    return [dm.train_step(x, target=y) for x, y in data]


def _pipelined(dm: decouple.DecoupledModel, data: Batches, **kw: Any) -> decouple.RunStats:
    with dm.pipeline(**kw) as pipe:
        for x, y in data:
            pipe.submit(x, target=y)
        return pipe.drain()


def _decouple_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("decouple-stage")]


# -- the correctness invariant ---------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "make, data", [(_cnn, _images([6, 6, 6, 6, 6, 3])), (_mlp, _vectors([8, 8, 8, 8, 5]))], ids=["rescnn", "mlp"]
)
def test_pipeline_equals_sequential_training(make: Callable[..., decouple.DecoupledModel], data: Batches) -> None:
    with one_thread():
        reference = make()
        losses = _sequential(reference, data)
        piped = make(devices=["cpu", "cpu"])
        stats = _pipelined(piped, data)
    assert_same_training_state(reference, piped)
    assert piped.steps == reference.steps == len(data)
    assert stats.batches == len(data) and stats.samples == sum(len(y) for _, y in data)
    for key in losses[0]:
        assert stats.losses[key] == pytest.approx(sum(step[key] for step in losses) / len(losses), rel=1e-6)


@pytest.mark.timeout(60)
@settings(max_examples=6, deadline=None)
@given(sizes=st.lists(st.integers(2, 7), min_size=1, max_size=6), depth=st.integers(1, 3))
def test_pipeline_equals_sequential_for_any_batches_and_depth(sizes: list[int], depth: int) -> None:
    data = _vectors(sizes)
    with one_thread():
        reference = _mlp()
        _sequential(reference, data)
        piped = _mlp()
        _pipelined(piped, data, depth=depth)
    assert_same_training_state(reference, piped)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", [m for m in registered_methods(decoupled=True) if m != "scl"])
def test_pipeline_equals_sequential_for_other_methods(method: str) -> None:
    data = _vectors([8, 8, 8, 5])
    with one_thread():
        reference = _mlp(method, **small_options(method))
        _sequential(reference, data)
        devices = ["cpu"] * reference.num_stages  # "al" drops the head's stage
        piped = _mlp(method, devices=devices, **small_options(method))
        _pipelined(piped, data)
    assert_same_training_state(reference, piped)


@pytest.mark.timeout(60)
def test_pipeline_with_intra_op_threads_stays_close() -> None:
    data = _images([6, 6, 6, 4])
    reference, piped = _cnn(), _cnn()
    _sequential(reference, data)
    _pipelined(piped, data)
    for x, y in zip(_state(reference), _state(piped)):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(60)
def test_drain_keeps_the_pipeline_open_and_counts_each_chunk() -> None:
    data = _vectors([4, 4, 4, 4, 4])
    with one_thread():
        reference = _mlp()
        _sequential(reference, data)
        piped = _mlp()
        with piped.pipeline() as pipe:
            for x, y in data[:2]:
                pipe.submit(x, target=y)
            first = pipe.drain()
            assert piped.steps == 2
            for x, y in data[2:]:
                pipe.submit(x, target=y)
            second = pipe.drain()
    assert (first.batches, second.batches) == (2, 3)
    assert (first.samples, second.samples) == (8, 12)
    assert piped.steps == 5 and not _decouple_threads()
    assert_same_training_state(reference, piped)
    with pytest.raises(decouple.ConfigError, match="closed"):
        pipe.submit(*data[0][:1], target=data[0][1])


@pytest.mark.timeout(60)
def test_leaving_the_block_finishes_submitted_batches() -> None:
    dm = _mlp()
    with dm.pipeline(depth=1) as pipe:
        for x, y in _vectors([4, 4, 4]):
            pipe.submit(x, target=y)
    assert dm.steps == 3 and pipe.completed == 3
    assert not _decouple_threads()


# -- faults ----------------------------------------------------------------------------------
def _fail_at(dm: decouple.DecoupledModel, stage: int, batch: int, exc: BaseException) -> None:
    """Make ``stage``'s local objective raise ``exc`` on its ``batch``-th call."""
    target = dm.stages[stage]
    original = target.evaluate
    calls = {"n": 0}

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == batch + 1:
            raise exc
        return original(*args, **kwargs)

    target.evaluate = evaluate  # type: ignore[method-assign]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stage, batch", [(0, 0), (1, 3), (2, 5)])
def test_a_failing_stage_stops_every_worker_and_names_stage_and_batch(stage: int, batch: int) -> None:
    dm = _cnn()
    _fail_at(dm, stage, batch, RuntimeError("boom"))
    failure = pytest.raises(decouple.StageError, match=rf"stage {stage} .*batch {batch}: RuntimeError: boom")
    with failure as info, dm.pipeline(depth=1) as pipe:
        for x, y in _images([4] * 12):
            pipe.submit(x, target=y)
        pipe.drain()
    assert (info.value.stage, info.value.batch) == (stage, batch)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not _decouple_threads()
    assert dm.steps <= batch  # only batches every stage finished count


@pytest.mark.timeout(60)
def test_a_bad_batch_fails_in_the_stage_and_the_caller_sees_it() -> None:
    dm = _mlp()
    data = [*_vectors([4, 4]), (torch.randn(4, 10), torch.tensor([0, 1, 9, 2]))]  # class 9 of 4
    with pytest.raises(decouple.StageError) as info:
        _pipelined(dm, data)
    assert info.value.batch == 2
    assert not _decouple_threads()


def _nan_on_class_3(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = torch.nn.functional.cross_entropy(output, target)
    return loss * torch.nan if bool((target == 3).all()) else loss


@pytest.mark.timeout(60)
def test_a_nan_loss_stops_the_pipeline() -> None:
    dm = _mlp(loss_fn=_nan_on_class_3)
    data = [*_vectors([4, 4]), (torch.randn(4, 10), torch.full((4,), 3))]
    with pytest.raises(decouple.StageError, match="stage 2 .*batch 2: StageError: stage 2: local loss is nan") as info:
        _pipelined(dm, data)
    assert info.value.stage == 2 and not _decouple_threads()


@pytest.mark.timeout(60)
def test_the_skip_policy_keeps_the_pipeline_running() -> None:
    dm = _mlp(loss_fn=_nan_on_class_3, on_nonfinite="skip")
    data = [*_vectors([4, 4]), (torch.randn(4, 10), torch.full((4,), 3)), *_vectors([4])]
    _pipelined(dm, data)
    assert [s.skipped_steps for s in dm.stages] == [0, 0, 1]
    assert dm.steps == 4


@pytest.mark.timeout(60)
def test_a_pipeline_that_failed_keeps_refusing_batches() -> None:
    dm = _mlp()
    _fail_at(dm, 0, 0, RuntimeError("boom"))
    ((x, y),) = _vectors([4])
    with pytest.raises(decouple.StageError), dm.pipeline() as pipe:
        pipe.submit(x, target=y)
        with pytest.raises(decouple.StageError, match="batch 0"):
            pipe.drain()
        with pytest.raises(decouple.StageError, match="batch 0"):
            pipe.submit(x, target=y)
        pipe.drain()
    assert dm.steps == 0 and not _decouple_threads()


@pytest.mark.timeout(60)
def test_keyboard_interrupt_in_the_caller_shuts_down_cleanly() -> None:
    dm = _cnn()
    with pytest.raises(KeyboardInterrupt), dm.pipeline(depth=1) as pipe:
        for i, (x, y) in enumerate(_images([4] * 10)):
            if i == 5:
                raise KeyboardInterrupt
            pipe.submit(x, target=y)
    assert not _decouple_threads()
    assert dm.steps <= 5


@pytest.mark.timeout(60)
def test_keyboard_interrupt_inside_a_worker_becomes_a_stage_error() -> None:
    dm = _mlp()
    _fail_at(dm, 1, 2, KeyboardInterrupt())
    with pytest.raises(decouple.StageError, match="stage 1 .*batch 2") as info:
        _pipelined(dm, _vectors([4] * 6))
    assert isinstance(info.value.__cause__, KeyboardInterrupt)
    assert not _decouple_threads()


@pytest.mark.timeout(60)
def test_bad_inputs_raise_in_the_caller_and_shut_down() -> None:
    dm = _mlp()
    with pytest.raises(decouple.InputError), dm.pipeline() as pipe:
        pipe.submit(torch.randn(4, 10), torch.randn(4, 10), target=torch.zeros(4, dtype=torch.long))
    assert not _decouple_threads()


def test_pipeline_options_are_checked() -> None:
    with pytest.raises(decouple.ConfigError, match="depth must be an int >= 1"):
        _mlp().pipeline(depth=0)
    for bad in (0, "all", 1.5):
        with pytest.raises(decouple.ConfigError, match="backward_slots must be an int >= 1"):
            _mlp().pipeline(backward_slots=bad)  # type: ignore[arg-type]
    with pytest.raises(decouple.ConfigError, match="end to end"):
        _mlp("bp").pipeline()
    with pytest.raises(decouple.ConfigError, match="not running"):
        _mlp().pipeline().submit(torch.randn(2, 10), target=torch.zeros(2, dtype=torch.long))
    with pytest.raises(decouple.ConfigError, match="no timeline"):
        _mlp().timeline()


# -- fit -------------------------------------------------------------------------------------
def _loader(n: int = 22, batch: int = 8) -> torch.utils.data.DataLoader:
    x, y = _vectors([n])[0]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)  # last batch: 6


@pytest.mark.timeout(60)
def test_fit_pipelined_equals_fit_sequential() -> None:
    seen: list[tuple[int, int]] = []
    with one_thread():
        piped, plain = _mlp(), _mlp()
        history = piped.fit(
            _loader(), epochs=2, progress=False, on_epoch_end=lambda e, s: seen.append((e, piped.steps))
        )
        plain_history = plain.fit(_loader(), epochs=2, pipelined=False, progress=False)
    assert_same_training_state(piped, plain)
    assert seen == [(0, 3), (1, 6)] and piped.steps == plain.steps == 6
    for ours, theirs in zip(history, plain_history):
        assert (ours.batches, ours.samples) == (theirs.batches, theirs.samples) == (3, 22)
        assert ours.losses == pytest.approx(theirs.losses)
        assert ours.accuracy == pytest.approx(theirs.accuracy) and 0 <= ours.accuracy <= 1
        assert ours.peak_memory == [None, None, None]


@pytest.mark.timeout(60)
def test_fit_shows_a_progress_bar_with_stage_losses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tqdm.auto

    counts: list[tuple[str, int, int]] = []

    class Recording(tqdm.auto.tqdm):  # type: ignore[misc, name-defined]
        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            counts.append((self.desc, self.n, self.total))
            return shown

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    _mlp().fit(_loader(n=64, batch=4), epochs=2, depth=1)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "s0=" in err and "s2=" in err and "acc=" in err
    assert all(0 <= n <= total == 16 for _, n, total in counts)  # each epoch counts its own batches
    assert {(desc, n) for desc, n, _ in counts} >= {("epoch 1/2", 16), ("epoch 2/2", 16)}


@pytest.mark.timeout(60)
def test_fit_backprop_trains_sequentially() -> None:
    dm = _mlp("bp")
    (stats,) = dm.fit(_loader(), progress=False)
    assert list(stats.losses) == ["stage2"] and stats.accuracy is not None and dm.steps == 3
    with pytest.raises(decouple.ConfigError, match="record=True"):
        dm.fit(_loader(), progress=False, record=True)


@pytest.mark.timeout(60)
def test_fit_reads_dict_and_multi_input_batches() -> None:
    x, y = _vectors([12])[0]
    dicts = [{"x": x[i : i + 4], "labels": y[i : i + 4]} for i in range(0, 12, 4)]
    tuples = [[x[i : i + 4], y[i : i + 4]] for i in range(0, 12, 4)]
    with one_thread():
        a, b = _mlp(), _mlp()
        a.fit(dicts, progress=False)
        b.fit(tuples, progress=False)
    assert_same_training_state(a, b)


def test_fit_rejects_bad_loaders() -> None:
    dm = _mlp()
    with pytest.raises(decouple.InputError, match="empty"):
        dm.fit([], progress=False)
    with pytest.raises(decouple.InputError, match="no batches"):
        dm.fit(iter(()), progress=False)
    with pytest.raises(decouple.InputError, match=r"\(x, y\)"):
        dm.fit([torch.randn(4, 10)], progress=False)
    with pytest.raises(decouple.InputError, match="exactly one of"):
        dm.fit([{"x": torch.randn(4, 10)}], progress=False)
    with pytest.raises(decouple.ConfigError, match="epochs"):
        dm.fit(_loader(), epochs=0)
    assert not _decouple_threads()


# -- timeline and schedule -------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_timeline_is_ordered_and_renders(tmp_path: Any) -> None:
    dm = _cnn()
    dm.fit(_images_loader(), progress=False, record=True)
    timeline = dm.timeline()
    assert timeline.devices == ["cpu"] * 3 and not timeline.violations()
    for k in range(3):
        events = timeline.stage_events(k)
        assert [e.batch for e in events] == sorted(e.batch for e in events)
        for b in {e.batch for e in events}:
            phases = [e for e in events if e.batch == b]
            assert [e.phase for e in phases] == ["forward", "loss", "backward", "step"]
            assert all(p.start <= p.end <= q.start for p, q in itertools.pairwise(phases))
    assert len(timeline.events) == 3 * 4 * 4
    assert all(0 < u <= 1 for u in timeline.utilization())
    path = timeline.render_png(tmp_path / "timeline.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def _images_loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return _images([4, 4, 4, 2])


def test_clock_cycles_overlap_consecutive_batches() -> None:
    assert list(clock_cycles(3, 2)) == [[(0, 0)], [(1, 0), (0, 1)], [(2, 0), (1, 1)], [(2, 1)]]
    assert list(clock_cycles(2, 3)) == [[(0, 0)], [(1, 0), (0, 1)], [(1, 1), (0, 2)], [(1, 2)]]
    assert ideal_ticks(4, 3) == len(list(clock_cycles(4, 3))) == 6
    assert dependencies(0, 0) == [] and dependencies(2, 1) == [(2, 0), (1, 1)]


def test_schedule_violations_spot_a_batch_that_ran_early() -> None:
    good = [(0, 0, 0.0, 1.0), (0, 1, 1.0, 2.0), (1, 0, 1.0, 2.0), (1, 1, 2.0, 3.0)]
    assert schedule_violations(good) == []
    bad = [(0, 0, 0.0, 1.0), (0, 1, 0.5, 2.0)]
    assert schedule_violations(bad) == [
        "batch 0 on stage 1 started at 0.500000s before batch 0 on stage 0 ended at 1.000000s"
    ]


# -- devices ---------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.cuda
@pytest.mark.parametrize("devices", [["cuda:0", "cuda:0"], ["cpu", "cuda:0"], ["cuda:0", "cpu"]])
def test_pipeline_across_devices_matches_sequential(devices: list[str]) -> None:
    data = _images([6, 6, 6, 6, 3])
    reference, piped = _cnn(devices=devices), _cnn(devices=devices)
    _sequential(reference, data)
    stats = _pipelined(piped, data, record=True)
    for x, y in zip(_state(reference), _state(piped)):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert [m is not None for m in stats.peak_memory] == [s.device.type == "cuda" for s in piped.stages]
    assert not piped.timeline().violations()


@pytest.mark.timeout(120)
@pytest.mark.cuda
@pytest.mark.parametrize("slots", [1, "auto", None])
def test_backward_slots_on_a_gpu_match_sequential(slots: int | str | None) -> None:
    from decouple.runtime.backward_gate import slots_for

    assert slots_for("auto", "cuda:0") is None and slots_for("auto", "cpu") == 2
    data = _vectors([8, 8, 8, 8, 5])
    devices = ["cuda:0", "cuda:0", "cuda:0"]
    reference, piped = _mlp(devices=devices), _mlp(devices=devices)
    _sequential(reference, data)
    _pipelined(piped, data, backward_slots=slots)  # one slot: each backward finishes on its stream first
    for x, y in zip(_state(reference), _state(piped)):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
