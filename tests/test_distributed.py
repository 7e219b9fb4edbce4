"""Multi-process training: one stage per rank equals sequential training; failures stop every rank.

Fast tests run ranks as threads of this process, each with its own gloo process group over
127.0.0.1; the others spawn real processes with ``decouple.distributed.launch`` (a few seconds
per group). Every comparison runs with one intra-op thread, so equal means bit-identical.
"""

from __future__ import annotations

import datetime
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decouple
from decouple.distributed import (
    StageTrainer,
    checkpoint_path,
    fit_processes,
    gather_effective_state_dict,
    launch,
    merge_checkpoints,
)
from decouple.runtime.distributed.links import Kind, Link
from decouple.runtime.distributed.rank_loop import StageRunner

from .helpers import one_thread, registered_methods, small_options
from .models import MLP, ResCNN

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

WIDTHS = [8, 16, 16, 12]


# -- models and data (module level: spawned ranks import them) ------------------------------
def mlp_dm(splits: tuple[str, ...] = ("layers.0",), seed: int = 0, method: Any = "scl") -> decouple.DecoupledModel:
    torch.manual_seed(seed)
    options = small_options(method) if isinstance(method, str) else {}
    return decouple.convert(
        MLP(WIDTHS), method=method, splits=list(splits), example_inputs=(torch.randn(2, 8),), **options
    )


def batches(n: int = 5, size: int = 8, last: int = 5, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of ``size`` samples, the last of ``last``; every class in every batch."""
    g = torch.Generator().manual_seed(seed)
    sizes = [size] * (n - 1) + [last]
    return [(torch.randn(s, 8, generator=g), torch.arange(s) % 4) for s in sizes]


def sequential(dm: decouple.DecoupledModel, data: list[Any], epochs: int = 1) -> decouple.DecoupledModel:
    with one_thread():
        for _ in range(epochs):
            for x, y in data:
                dm.train_step(x, target=y)
    return dm


def tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = tensors_of(a), tensors_of(b)
    assert sa.keys() == sb.keys() and sa
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# -- ranks as threads ---------------------------------------------------------------------------
def thread_groups(n: int, timeout: float = 30.0) -> list[dist.ProcessGroup]:
    """``n`` gloo process groups forming one world inside this process, on the loopback device."""
    store = dist.HashStore()
    device = dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")
    groups: list[Any] = [None] * n

    def make(rank: int) -> None:
        options = dist.ProcessGroupGloo._Options()
        options._devices = [device]
        options._timeout = datetime.timedelta(seconds=timeout)
        groups[rank] = dist.ProcessGroupGloo(store, rank, n, options)

    threads = [threading.Thread(target=make, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return groups


def run_as_threads(dm: decouple.DecoupledModel, data: list[Any], epochs: int = 1) -> list[Any]:
    """Train each stage of ``dm`` in its own thread, linked as the ranks of a multi-process run."""
    n = dm.num_stages
    groups = thread_groups(n)
    cpu = torch.device("cpu")
    logs: list[Any] = [None] * n
    errors: list[BaseException] = []
    dm.train()

    def rank(r: int) -> None:
        inbox = Link(groups[r], r - 1, cpu) if r > 0 else None
        outbox = Link(groups[r], r + 1, cpu) if r < n - 1 else None
        runner = StageRunner(dm.stages[r], inbox=inbox, outbox=outbox, config=dm.training_config)
        try:
            if r == 0:
                logs[r] = runner.run_source(epochs, lambda epoch: ((dm.bind((x,), {}), y) for x, y in data))
            else:
                logs[r] = runner.run_follower()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    with one_thread():
        threads = [threading.Thread(target=rank, args=(r,)) for r in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    if errors:
        raise errors[0]
    return logs


@pytest.mark.parametrize("splits", [("layers.0",), ("layers.0", "layers.1")], ids=["2 stages", "3 stages"])
def test_ranks_equal_sequential_training(splits: tuple[str, ...]) -> None:
    data = batches()
    reference = sequential(mlp_dm(splits), data, epochs=2)
    dm = mlp_dm(splits)
    logs = run_as_threads(dm, data, epochs=2)
    assert_same_state(dm, reference)
    assert [log.batches for log in logs] == [2 * len(data)] * len((*splits, ""))
    assert all(len(log.epoch_losses) == 2 for log in logs)


def test_long_skip_and_batch_norm_equal_sequential_training() -> None:
    def convert() -> decouple.DecoupledModel:
        torch.manual_seed(0)
        return decouple.convert(
            ResCNN(channels=4, blocks=2, num_classes=3),
            splits=["blocks.0", "blocks.1"],
            example_inputs=(torch.randn(2, 3, 8, 8),),
        )

    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(s, 3, 8, 8, generator=g), torch.arange(s) % 3) for s in (6, 6, 4)]
    assert len(convert().stages[1].io[True].message_out) == 2  # the long skip travels with the activation
    reference = sequential(convert(), data)
    dm = convert()
    run_as_threads(dm, data)
    assert_same_state(dm, reference)


@pytest.mark.parametrize("method", [m for m in registered_methods(decoupled=True) if m != "scl"])
def test_other_methods_equal_sequential_training(method: str) -> None:
    data = batches()
    reference = sequential(mlp_dm(("layers.0", "layers.1"), method=method), data)
    dm = mlp_dm(("layers.0", "layers.1"), method=method)
    run_as_threads(dm, data)
    assert_same_state(dm, reference)


# -- transport ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def link_pair() -> tuple[Link, Link]:
    groups = thread_groups(2)
    return Link(groups[0], 1, torch.device("cpu")), Link(groups[1], 0, torch.device("cpu"))


_DTYPES = [torch.float32, torch.float64, torch.int64, torch.bool, torch.bfloat16]


@st.composite
def tensors(draw: st.DrawFn, batch: int) -> torch.Tensor:
    dtype = draw(st.sampled_from(_DTYPES))
    shape = (batch, *draw(st.lists(st.integers(0, 3), max_size=3)))
    values = torch.randn(shape).mul(5)
    tensor = values.to(dtype) if dtype != torch.bool else values > 0
    if len(shape) == 4 and draw(st.booleans()):
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    if len(shape) == 2 and draw(st.booleans()):
        tensor = tensor.t().contiguous().t()  # a transposed (non-contiguous) view
    return tensor


leaf_values = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3))


@st.composite
def payloads(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    batch = draw(st.integers(0, 9))
    message = draw(st.dictionaries(st.sampled_from(["x", "mask", "skip"]), tensors(batch), min_size=1))
    carry = draw(st.one_of(tensors(batch), st.tuples(tensors(batch), leaf_values), leaf_values))
    return message, carry


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(payloads(), min_size=1, max_size=4))
def test_messages_arrive_as_sent(link_pair: tuple[Link, Link], stream: list[Any]) -> None:
    sender, receiver = link_pair
    for payload in stream:
        sender.send(payload)
        kind, received = receiver.recv()
        assert kind == Kind.DATA
        assert _same(payload, received)
        message, _ = received
        for sent, got in zip(payload[0].values(), message.values()):
            assert torch.equal(sent, got) and not got.requires_grad
            if sent.dim() == 4 and not sent.is_contiguous():
                assert got.is_contiguous(memory_format=torch.channels_last)
    sender.send_kind(Kind.EPOCH_END)
    assert receiver.recv() == (Kind.EPOCH_END, None)
    sender.flush()


def test_unchanged_header_is_not_sent_again(link_pair: tuple[Link, Link], monkeypatch: pytest.MonkeyPatch) -> None:
    sender, receiver = link_pair
    posted: list[int] = []
    post = sender._post
    monkeypatch.setattr(sender, "_post", lambda tensors: (posted.append(len(tensors)), post(tensors))[1])
    for size in (4, 4, 3):
        sender.send(({"x": torch.ones(size, 2)}, torch.arange(size)))
        assert receiver.recv()[1][1].shape == (size,)
    assert posted == [4, 3, 4]  # preamble, header, two tensors; the same header again; a new batch size


# -- errors without a second process ------------------------------------------------------------
@pytest.fixture
def single_rank_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=datetime.timedelta(seconds=30)
    )
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "replicas, message",
    [
        (None, r"the model has 2 stages but the process group has 1 rank; the world size must be a multiple of 2.*"
         r"torchrun --nproc-per-node 2 or launch\(fn, 2\)$"),
        (3, r"must be 2 stages x 3 replicas = 6.*--nproc-per-node 6"),
        (0, r"replicas must be a positive int.*got 0"),
    ],
)  # fmt: skip
def test_world_size_must_be_stages_times_replicas(single_rank_world: None, replicas: int | None, message: str) -> None:
    with pytest.raises(decouple.ConfigError, match=message):
        StageTrainer(mlp_dm(), replicas=replicas)


def test_end_to_end_backprop_cannot_run_one_stage_per_process() -> None:
    with pytest.raises(decouple.ConfigError, match="method 'bp' trains end to end"):
        StageTrainer(mlp_dm(method="bp"))


def test_without_a_process_group_the_error_says_how_to_start_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(decouple.ConfigError, match="torchrun --nproc-per-node N"):
        StageTrainer(mlp_dm())


def test_bad_batches_are_rejected() -> None:
    from decouple.runtime.batches import unpack_batch

    assert unpack_batch((1, 2, 3)) == ((1, 2), {}, 3)
    with pytest.raises(decouple.InputError, match="cannot read a batch of type Tensor"):
        unpack_batch(torch.ones(3))


def test_stage_checkpoints_that_do_not_fit_together_are_rejected(tmp_path: Any) -> None:
    def stage_file(stage: int, fingerprint: str, steps: int = 3) -> None:
        torch.save(
            {
                "format": "decouple-stage/1",
                "method": "scl",
                "fingerprint": fingerprint,
                "stage": stage,
                "num_stages": 3,
                "steps": steps,
                "module": {},
                "objective": {},
                "optimizer": None,
            },
            checkpoint_path(tmp_path, stage),
        )

    with pytest.raises(decouple.DecoupleError, match="no stage checkpoints"):
        merge_checkpoints(tmp_path)
    stage_file(0, "a")
    stage_file(2, "a")
    with pytest.raises(decouple.DecoupleError, match=r"hold stages \[0, 2\] of a 3-stage model"):
        merge_checkpoints(tmp_path)
    stage_file(1, "b")
    with pytest.raises(decouple.DecoupleError, match="different conversions"):
        merge_checkpoints(tmp_path)
    stage_file(1, "a", steps=2)
    with pytest.raises(decouple.DecoupleError, match=r"different steps \[2, 3\]"):
        merge_checkpoints(tmp_path)


# -- real processes -----------------------------------------------------------------------------
def train_rank(splits: tuple[str, ...], data: list[Any], epochs: int, directory: str) -> dict[str, Any]:
    """One rank: train, save its checkpoint, gather the effective weights, reload into a fresh trainer."""
    trainer = StageTrainer(mlp_dm(splits))
    history = trainer.fit(data if trainer.rank == 0 else None, epochs)
    trainer.save(directory)
    effective = gather_effective_state_dict(trainer)
    fresh = StageTrainer(mlp_dm(splits, seed=7))
    fresh.load(directory)
    return {
        "rank": trainer.rank,
        "history": history,
        "effective": effective,
        "reloaded": {k: v.clone() for k, v in tensors_of(fresh.stage).items()},
    }


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("checkpoints")
    data = batches()
    start = time.monotonic()
    results = launch(train_rank, 2, ("layers.0",), data, 2, str(directory), threads=1, timeout=60)
    return {"results": results, "data": data, "directory": directory, "seconds": time.monotonic() - start}


@pytest.mark.timeout(120)
def test_two_processes_equal_sequential_training(two_rank_run: dict[str, Any]) -> None:
    reference = sequential(mlp_dm(), two_rank_run["data"], epochs=2)
    dm = mlp_dm(seed=5)
    dm.load_state_dict(merge_checkpoints(two_rank_run["directory"]))
    assert_same_state(dm, reference)
    assert dm.steps == reference.steps == 10
    histories = [r["history"] for r in two_rank_run["results"]]
    assert histories[0] == histories[1]
    assert set(histories[0].losses) == {"stage0", "stage1"} and histories[0].batches == 10
    for r in two_rank_run["results"]:
        assert_same_state_dict(r["reloaded"], tensors_of(reference.stages[r["rank"]]))


def assert_same_state_dict(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.timeout(120)
def test_checkpoint_resumes_in_one_process_exactly(two_rank_run: dict[str, Any]) -> None:
    data = two_rank_run["data"]
    reference = sequential(mlp_dm(), data, epochs=3)
    resumed = mlp_dm(seed=5)
    resumed.load_state_dict(merge_checkpoints(two_rank_run["directory"]))
    sequential(resumed, data)  # the third epoch, with the optimizers' state from the distributed run
    assert_same_state(resumed, reference)


@pytest.mark.timeout(120)
def test_gathered_weights_load_into_the_original_class(two_rank_run: dict[str, Any]) -> None:
    results = two_rank_run["results"]
    assert results[1]["effective"] is None
    model = MLP(WIDTHS)
    model.load_state_dict(results[0]["effective"], strict=True)
    reference = sequential(mlp_dm(), two_rank_run["data"], epochs=2)
    x = torch.randn(5, 8)
    assert torch.equal(model.eval()(x), reference.inference_module()(x))


@pytest.mark.timeout(120)
def test_fit_processes_trains_the_model_in_place() -> None:
    def convert() -> decouple.DecoupledModel:
        torch.manual_seed(0)
        return decouple.convert(
            ResCNN(channels=4, blocks=2, num_classes=3),
            splits=["blocks.0", "blocks.1"],
            example_inputs=(torch.randn(2, 3, 8, 8),),
        )

    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(s, 3, 8, 8, generator=g), torch.arange(s) % 3) for s in (6, 6, 4)]
    reference = sequential(convert(), data)
    dm = convert()
    history = fit_processes(dm, data, threads=1, timeout=60)
    assert_same_state(dm, reference)
    assert dm.steps == 3 and history.batches == 3 and set(history.losses) == {"stage0", "stage1", "stage2"}


@pytest.mark.timeout(120)
def test_dict_batches_train_the_same_with_processes_as_with_threads() -> None:
    """One batch reader for every runtime: keyword inputs and the target under "target" work everywhere."""
    data = [{"x": x, "target": y} for x, y in batches(n=3)]
    threaded = mlp_dm(("layers.0", "layers.1"))
    with one_thread():
        threaded.fit(data, epochs=1, progress=False)
    dm = mlp_dm(("layers.0", "layers.1"))
    history = dm.fit(data, epochs=1, backend="processes")
    assert_same_state(dm, threaded)
    assert dm.steps == threaded.steps == 3 and history.batches == 3


def failing_rank(fail_rank: int, at_batch: int, how: str, data: list[Any]) -> None:
    """Train 3 stages; rank ``fail_rank`` raises (or dies, or hangs) on its batch ``at_batch``."""
    dm = mlp_dm(("layers.0", "layers.1"))
    trainer = StageTrainer(dm)
    if trainer.rank == fail_rank:
        calls = itertools.count()

        def hook(module: Any, args: Any) -> None:
            if next(calls) == at_batch:
                if how == "exit":
                    os._exit(3)
                if how == "hang":
                    time.sleep(600)
                raise RuntimeError("injected failure")

        dm.stages[fail_rank].module.register_forward_pre_hook(hook)
    trainer.fit(data if trainer.rank == 0 else None, epochs=3)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fail_rank", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_rank_that_raises_stops_every_rank(fail_rank: int) -> None:
    start = time.monotonic()
    with pytest.raises(
        decouple.StageError, match=f"stage {fail_rank} failed on batch 2 of epoch 0: RuntimeError: injected failure"
    ) as info:
        launch(failing_rank, 3, fail_rank, 2, "raise", batches(n=20), threads=1, timeout=60, grace=30)
    assert time.monotonic() - start < 60  # the others stop on their own, well before the grace period ends
    assert info.value.stage == fail_rank and info.value.batch == 2
    cause = info.value.__cause__
    assert isinstance(cause, decouple.LaunchError)
    assert cause.exitcodes == {0: 1, 1: 1, 2: 1}
    for rank in {0, 1, 2} - {fail_rank}:
        assert f"rank {rank}: exit code 1, RankFailedError: rank {rank} stopped" in str(cause)
        assert f"because rank {fail_rank} failed: StageError" in str(cause)


def mismatched_rank() -> None:
    rank = int(os.environ["RANK"])
    StageTrainer(mlp_dm(("layers.0",) if rank == 0 else ("layers.1",)))


@pytest.mark.timeout(120)
def test_ranks_with_different_conversions_are_named() -> None:
    with pytest.raises(
        decouple.ConfigError,
        match=r"the ranks converted different models \(rank 0: fingerprint \w+ \(method 'scl', 2 stages\); rank 1: fingerprint \w+",
    ) as info:
        launch(mismatched_rank, 2, threads=1, timeout=60)
    assert info.value.__cause__.exitcodes == {0: 1, 1: 1}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_rank_that_dies_stops_every_rank() -> None:
    start = time.monotonic()
    with pytest.raises(decouple.LaunchError, match="rank 1: exit code 3 without reporting a result") as info:
        launch(failing_rank, 3, 1, 2, "exit", batches(n=20), threads=1, timeout=60, grace=30)
    assert time.monotonic() - start < 60
    assert info.value.exitcodes == {0: 1, 1: 3, 2: 1}
    assert "closed its connection without reporting an error" in str(info.value)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_rank_that_hangs_is_stopped_after_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(decouple.LaunchError, match="rank 1: killed by signal 15") as info:
        launch(failing_rank, 3, 1, 2, "hang", batches(n=20), threads=1, timeout=5, grace=5)
    assert time.monotonic() - start < 60
    assert info.value.exitcodes == {0: 1, 1: -15, 2: 1}
    assert "rank 1 did not answer within the process group's timeout" in str(info.value)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_example_trains_two_ranks_and_evaluates(tmp_path: Any) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    args = ["--nprocs", "2", "--train-limit", "512", "--checkpoint", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "train_distributed.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr
    assert "test accuracy of SmallCNN with the trained weights" in done.stdout
    assert sorted(p.name for p in tmp_path.glob("stage*.pt")) == ["stage0.pt", "stage1.pt"]
