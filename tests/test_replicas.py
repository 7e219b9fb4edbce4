"""Data-parallel replicas of every stage: R pipelines of S stages train as one process on the whole batch.

Unit tests run in this process (shards, the anchor-limited SupCon, gradient averaging over thread
process groups); the rest spawn real processes with ``decouple.distributed.launch`` (4 or 6 ranks).
Replicas average their gradients with an all-reduce, which sums in another order than one process
does, so parameters compare within 1e-5 (SGD, a few steps) rather than bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decouple
from decouple.distributed import StageTrainer, gather_effective_state_dict, launch, merge_checkpoints
from decouple.objectives.base import LocalResult
from decouple.objectives.losses import supcon_loss
from decouple.runtime.distributed.replicas import GradientAverager, shard

from .helpers import one_thread
from .models import MLP
from .test_distributed import thread_groups

WIDTHS = [8, 16, 16, 12]
SPLITS = ["layers.0", "layers.1", "layers.2"]


# -- models and data (module level: spawned ranks import them) ------------------------------
def replica_dm(method: str, stages: int = 2, **options: Any) -> decouple.DecoupledModel:
    torch.manual_seed(0)
    heads = {"head": "linear", "head_dims": [8]} if method == "scl" else {}
    splits = SPLITS[: stages if method == "al" else stages - 1]  # associated learning replaces the head's stage
    return decouple.convert(
        MLP(WIDTHS, num_classes=4), method=method, splits=splits, example_inputs=(torch.randn(2, 8),),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9), **heads, **options,
    )  # fmt: skip


def global_batches(n: int = 4, size: int = 8, seed: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 8, generator=g), torch.randperm(size, generator=g) % 4) for _ in range(n)]


def one_process(dm: decouple.DecoupledModel, data: list[Any]) -> decouple.DecoupledModel:
    with one_thread():
        for x, y in data:
            dm.train_step(x, target=y)
    return dm


def per_shard_supcon(dm: decouple.DecoupledModel, replicas: int) -> decouple.DecoupledModel:
    """One process whose SupCon is the mean of the per-shard losses (what contrast="local" trains)."""
    for stage in dm.stages[:-1]:
        objective = stage.objective
        assert objective is not None
        original = objective.forward

        def forward(representation: Any, carry: Any, original: Any = original, **extras: Any) -> LocalResult:
            parts = [original(r, c) for r, c in zip(representation.chunk(replicas), carry.chunk(replicas))]
            return LocalResult(sum(p.loss for p in parts) / replicas, carry)

        objective.forward = forward  # type: ignore[method-assign]
    return dm


def assert_close_state(a: decouple.DecoupledModel, b: decouple.DecoupledModel, atol: float = 1e-5) -> None:
    sa = {k: v for s in a.stages for k, v in s.named_parameters()}
    sb = {k: v for s in b.stages for k, v in s.named_parameters()}
    assert sa.keys() == sb.keys() and sa
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=atol, rtol=0, msg=key)


def train_replicas(
    cases: list[tuple[str, int, dict[str, Any]]], data: list[Any], replicas: int
) -> list[dict[str, Any]]:
    """Each case (method, stages, options): train on ``replicas`` replicas; this rank's stage state per case."""
    states = []
    for method, stages, options in cases:
        trainer = StageTrainer(replica_dm(method, stages, **options), replicas=replicas)
        trainer.fit(data if trainer.rank == 0 else None, epochs=1)
        states.append({"stage": trainer.stage.index, "replica": trainer.mesh.replica, "state": trainer.state_dict()})
    return states


def _merged(results: list[list[dict[str, Any]]], case: int, stages: int) -> dict[str, Any]:
    parts = [rank[case] for rank in results if rank[case]["replica"] == 0]
    assert sorted(p["stage"] for p in parts) == list(range(stages))
    from decouple.runtime.state import merge_stage_checkpoints

    return merge_stage_checkpoints([p["state"] for p in parts])


def _replicas_agree(results: list[list[dict[str, Any]]], case: int) -> None:
    by_stage: dict[int, list[dict[str, Any]]] = {}
    for rank in results:
        by_stage.setdefault(rank[case]["stage"], []).append(rank[case]["state"]["module"])
    for modules in by_stage.values():
        for other in modules[1:]:
            for key in modules[0]:
                assert torch.equal(modules[0][key], other[key]), f"replicas of a stage differ in {key}"


# -- in this process ------------------------------------------------------------------------
def test_a_batch_splits_into_equal_shards_of_inputs_and_targets() -> None:
    x, mask, y = torch.arange(12.0).reshape(6, 2), torch.ones(6, 3), torch.arange(6)
    parts = shard({"x": x, "mask": mask, "n": 7}, y, 3)
    assert [p[1].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert torch.equal(parts[2][0]["x"], x[4:]) and parts[1][0]["n"] == 7
    with pytest.raises(
        decouple.InputError, match=r"a batch of 6 samples \(batch 4\) does not split into 4 equal shards"
    ):
        shard({"x": x}, y, 4, batch=4)
    with pytest.raises(decouple.InputError, match=r"input 'x' has shape \(2, 6\).*inputs must be batch-first"):
        shard({"x": torch.ones(2, 6)}, y, 2)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 4), st.integers(1, 4), st.integers(0, 2**16), st.sampled_from(["paper", "released"]))
def test_supcon_over_anchor_slices_adds_up_to_the_whole_batch(parts: int, per: int, seed: int, variant: str) -> None:
    g = torch.Generator().manual_seed(seed)
    n = parts * per
    z = torch.nn.functional.normalize(torch.randn(n, 5, generator=g), dim=1)
    labels = torch.randint(0, 3, (n,), generator=g)
    whole = supcon_loss(z, labels, 0.2, variant=variant, reduction="sum")  # type: ignore[arg-type]
    pieces = [
        supcon_loss(z, labels, 0.2, variant=variant, reduction="sum", anchors=slice(i * per, (i + 1) * per))  # type: ignore[arg-type]
        for i in range(parts)
    ]
    torch.testing.assert_close(sum(pieces), whole)
    mean_pieces = [supcon_loss(z, labels, 0.2, anchors=slice(i * per, (i + 1) * per)) for i in range(parts)]
    torch.testing.assert_close(sum(mean_pieces) / parts, supcon_loss(z, labels, 0.2))


def test_gradients_are_averaged_over_the_replica_group() -> None:
    groups = thread_groups(2)
    params = [[torch.nn.Parameter(torch.zeros(3)) for _ in range(3)] for _ in range(2)]
    for r in range(2):
        params[r][0].grad = torch.full((3,), float(r + 1))  # 1 and 2: mean 1.5
        if r == 1:
            params[r][1].grad = torch.full((3,), 4.0)  # only replica 1 reached it: mean 2
    stage = SimpleNamespace(device=torch.device("cpu"))
    stepped: list[Any] = [None, None]

    def run(r: int, nonfinite: bool) -> None:
        averager = GradientAverager(params[r], groups[r], 2, bucket_bytes=8)
        if nonfinite:
            averager.note_nonfinite()
        stepped[r] = averager(stage)  # type: ignore[arg-type]

    def both(nonfinite_on: int | None) -> None:
        threads = [threading.Thread(target=run, args=(r, r == nonfinite_on)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    both(None)
    assert stepped == [True, True]
    for r in range(2):
        assert params[r][0].grad.tolist() == [1.5] * 3
        assert params[r][1].grad.tolist() == [2.0] * 3
        assert params[r][2].grad is None  # no replica had a gradient: still none
    both(1)  # replica 1 skipped a non-finite loss: neither steps
    assert stepped == [False, False]


# -- real processes -------------------------------------------------------------------------
CASES: list[tuple[str, int, dict[str, Any]]] = [
    ("early_exit", 2, {}),
    ("al", 2, {}),
    ("scl", 2, {"contrast": "global"}),
    ("scl", 2, {"contrast": "local"}),
]


@pytest.fixture(scope="module")
def two_by_two() -> list[list[dict[str, Any]]]:
    return launch(train_replicas, 4, CASES, global_batches(), 2, threads=1, timeout=120)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{m} {o.get('contrast', '')}".strip() for m, _, o in CASES])
def test_two_stages_by_two_replicas_equal_one_process(two_by_two: list[list[dict[str, Any]]], case: int) -> None:
    method, stages, options = CASES[case]
    _replicas_agree(two_by_two, case)
    replicated = replica_dm(method, stages, **options)
    replicated.load_state_dict(_merged(two_by_two, case, stages))
    reference = replica_dm(method, stages, **options)
    if options.get("contrast") == "local":
        per_shard_supcon(reference, 2)
    one_process(reference, global_batches())
    assert replicated.steps == reference.steps == len(global_batches())
    assert_close_state(replicated, reference)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_stages_by_two_replicas_equal_one_process() -> None:
    cases: list[tuple[str, int, dict[str, Any]]] = [("scl", 3, {"contrast": "global"}), ("early_exit", 3, {})]
    results = launch(train_replicas, 6, cases, global_batches(), 2, threads=1, timeout=240)
    for case, (method, stages, options) in enumerate(cases):
        _replicas_agree(results, case)
        replicated = replica_dm(method, stages, **options)
        replicated.load_state_dict(_merged(results, case, stages))
        assert_close_state(replicated, one_process(replica_dm(method, stages, **options), global_batches()))


def test_local_contrast_is_not_the_global_batch_loss(two_by_two: list[list[dict[str, Any]]]) -> None:
    """The two contrast modes train differently (so the equalities above tell them apart)."""
    local = replica_dm("scl", 2, contrast="local")
    local.load_state_dict(_merged(two_by_two, 3, 2))
    whole_batch = one_process(replica_dm("scl", 2, contrast="local"), global_batches())
    first = next(iter(local.stages[0].module.parameters()))
    assert not torch.allclose(first, next(iter(whole_batch.stages[0].module.parameters())), atol=1e-4)


def failing_replica(fail_rank: int, at_batch: int, clock: str) -> None:
    """2 stages x 2 replicas; rank ``fail_rank`` raises on its batch ``at_batch`` (and writes the time to ``clock``)."""
    dm = replica_dm("scl", 2, contrast="global")
    trainer = StageTrainer(dm, replicas=2)
    if trainer.rank == fail_rank:
        calls = iter(range(1000))

        def hook(module: Any, args: Any) -> None:
            if next(calls) == at_batch:
                Path(clock).write_text(str(time.time()))
                raise RuntimeError("injected failure")

        trainer.stage.module.register_forward_pre_hook(hook)
    trainer.fit(global_batches(n=20) if trainer.rank == 0 else None, epochs=2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "fail_rank", [3, pytest.param(2, marks=pytest.mark.slow)], ids=["replica 1 stage 1", "replica 1 stage 0"]
)
def test_a_replica_that_raises_stops_every_rank(fail_rank: int, tmp_path: Path) -> None:
    clock = tmp_path / "failed_at"
    with pytest.raises(
        decouple.StageError, match="failed on batch 3 of epoch 0: RuntimeError: injected failure"
    ) as info:
        launch(failing_replica, 4, fail_rank, 3, str(clock), threads=1, timeout=60, grace=60)
    assert time.time() - float(clock.read_text()) < 30  # every rank stopped on its own, none waited for a timeout
    cause = info.value.__cause__
    assert isinstance(cause, decouple.LaunchError) and cause.exitcodes == {0: 1, 1: 1, 2: 1, 3: 1}
    for rank in {0, 1, 2, 3} - {fail_rank}:
        assert f"rank {rank}: exit code 1, RankFailedError: rank {rank} stopped" in str(cause)
        assert f"because rank {fail_rank} failed: StageError" in str(cause)


def save_then_resume(directory: str, replicas: int, steps: int, resume: bool) -> dict[str, Any] | None:
    """Train ``steps`` global batches on ``replicas`` replicas (after loading ``directory`` when ``resume``), then save."""
    trainer = StageTrainer(replica_dm("early_exit", 2), replicas=replicas)
    data = global_batches(n=6)
    if resume:
        trainer.load(directory)
        data = data[trainer.dm.steps :]
    trainer.fit(data[:steps] if trainer.rank == 0 else None, epochs=1)
    trainer.save(directory)
    return gather_effective_state_dict(trainer)


@pytest.mark.timeout(300)
def test_a_two_by_two_checkpoint_resumes_on_one_replica(tmp_path: Any) -> None:
    launch(save_then_resume, 4, str(tmp_path), 2, 3, False, threads=1, timeout=120)
    assert merge_checkpoints(tmp_path)["steps"] == 3
    launch(save_then_resume, 2, str(tmp_path), 1, 3, True, threads=1, timeout=120)
    resumed = replica_dm("early_exit", 2)
    resumed.load_state_dict(merge_checkpoints(tmp_path))
    reference = one_process(replica_dm("early_exit", 2), global_batches(n=6))
    assert resumed.steps == reference.steps == 6
    assert_close_state(resumed, reference)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_example_trains_two_stages_by_two_replicas(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    args = ["--nprocs", "4", "--replicas", "2", "--train-limit", "512", "--checkpoint", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "train_distributed.py"), *args],
        capture_output=True, text=True, env=env, timeout=380,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stage 1 of replica 1 holds" in done.stdout
    assert "test accuracy of SmallCNN with the trained weights" in done.stdout
    assert sorted(p.name for p in tmp_path.glob("stage*.pt")) == ["stage0.pt", "stage1.pt"]


@pytest.mark.slow  # dm.fit(backend="processes", replicas=2) below runs the same path by default
@pytest.mark.timeout(300)
def test_fit_processes_with_replicas_trains_the_model_in_place() -> None:
    from decouple.distributed import fit_processes

    dm = replica_dm("early_exit", 2)
    history = fit_processes(dm, global_batches(), replicas=2, threads=1, timeout=120)
    assert dm.steps == history.batches == len(global_batches())
    assert_close_state(dm, one_process(replica_dm("early_exit", 2), global_batches()))


@pytest.mark.timeout(300)
def test_fit_with_the_processes_backend_takes_replicas() -> None:
    dm = replica_dm("early_exit", 2)
    with pytest.raises(decouple.ConfigError, match="backend='processes', replicas=2"):
        dm.fit(global_batches(), backend="threads", replicas=2)
    dm.fit(global_batches(), backend="processes", replicas=2)
    assert dm.steps == len(global_batches())
    assert_close_state(dm, one_process(replica_dm("early_exit", 2), global_batches()))
