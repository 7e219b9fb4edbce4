"""The training configuration of a conversion: schedules, clipping, accumulation, precision, compile.

Every runtime steps a stage through one implementation (``decouple/runtime/step.py``), so these
tests compare runtimes with everything switched on, and check each setting against what it means
(accumulated gradients are the mean of the group's, clipped updates are bounded, the learning rate
follows the schedule, bf16 values cross the cuts in bf16 while losses stay fp32).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st

import decouple

from .helpers import one_thread
from .models import MLP, ResCNN

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _mlp(method: str = "scl", seed: int = 0, **kw: Any) -> decouple.DecoupledModel:
    torch.manual_seed(seed)
    return decouple.convert(MLP([10, 16, 16, 16], num_classes=4), method=method, splits=["layers.0", "layers.1"],
                            example_inputs=(torch.randn(2, 10),), **kw)  # fmt: skip


def _cnn(method: str = "scl", seed: int = 0, **kw: Any) -> decouple.DecoupledModel:
    torch.manual_seed(seed)
    return decouple.convert(ResCNN(channels=4, blocks=2, num_classes=3), method=method,
                            splits=["blocks.0", "blocks.1"], example_inputs=(torch.randn(2, 3, 8, 8),), **kw)  # fmt: skip


def _vectors(sizes: list[int], seed: int = 2) -> Batches:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 10, generator=g), torch.arange(n) % 4) for n in sizes]


def _images(sizes: list[int]) -> Batches:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3) for n in sizes]


def assert_same_state(a: decouple.DecoupledModel, b: decouple.DecoupledModel) -> None:
    left, right = pytree.tree_leaves(a.state_dict()), pytree.tree_leaves(b.state_dict())
    assert len(left) == len(right)
    for x, y in zip(left, right):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def _everything(**kw: Any) -> dict[str, Any]:
    """Scheduler, clipping and accumulation all on."""
    return {
        "optimizer": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        "scheduler": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.8),
        "clip_grad_norm": 0.5,
        "accumulate": 3,
        **kw,
    }


# -- runtimes agree ---------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["scl", "al", "early_exit"])
def test_pipelined_fit_equals_sequential_fit_with_schedule_clipping_and_accumulation(method: str) -> None:
    data = _images([6, 6, 6, 6, 6, 6, 4])  # 7 batches, accumulate=3: groups of 3, 3 and a partial 1
    with one_thread():
        piped, plain = _cnn(method, **_everything()), _cnn(method, **_everything())
        piped.fit(data, epochs=2, progress=False)
        plain.fit(data, epochs=2, pipelined=False, progress=False)
    assert_same_state(piped, plain)
    for stage in piped.stages:
        assert stage.scheduler.last_epoch == 6  # 3 optimizer steps per epoch (the partial group steps too)
        assert stage.optimizer.state_dict()["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.8**6)
        assert stage.accumulated == 0


@settings(max_examples=6, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 6), min_size=1, max_size=7),
    accumulate=st.integers(1, 4),
    interval=st.sampled_from(["step", "epoch"]),
)
def test_pipeline_equals_train_step_for_any_batches_and_group_size(
    sizes: list[int], accumulate: int, interval: str
) -> None:
    data = _vectors(sizes)
    kw = _everything(accumulate=accumulate, scheduler_interval=interval, clip_grad_value=0.05)
    with one_thread():
        piped, stepped = _mlp("early_exit", **kw), _mlp("early_exit", **kw)
        piped.fit(data, epochs=1, progress=False)
        for x, y in data:
            stepped.train_step(x, target=y)
        stepped.end_epoch()
    assert_same_state(piped, stepped)
    steps = math.ceil(len(sizes) / accumulate)
    assert stepped.stages[0].scheduler.last_epoch == (steps if interval == "step" else 1)


# -- what each setting means -------------------------------------------------------------------
def test_accumulated_gradients_are_the_mean_of_the_group() -> None:
    """Per-sample losses (cross-entropy, no batch norm): two half batches accumulated equal one whole batch,
    and a last partial group of one batch steps as that batch alone."""
    (whole,), (tail,) = _vectors([8]), _vectors([4], seed=5)
    halves = [(whole[0][:4], whole[1][:4]), (whole[0][4:], whole[1][4:])]
    sgd = {"optimizer": lambda params: torch.optim.SGD(params, lr=0.1)}
    accumulated, reference = _mlp("early_exit", accumulate=2, **sgd), _mlp("early_exit", **sgd)
    accumulated.fit([*halves, tail], progress=False, pipelined=False)
    reference.fit([whole, tail], progress=False, pipelined=False)
    for a, b in zip(accumulated.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert accumulated.steps == 3 and reference.steps == 2


@pytest.mark.parametrize("method", ["scl", "bp"])
def test_clipping_bounds_each_stage_update(method: str) -> None:
    clip = 1e-3
    dm = _mlp(method, optimizer=lambda params: torch.optim.SGD(params, lr=1.0), clip_grad_norm=clip)
    before = [[p.detach().clone() for p in s.parameters()] for s in dm.stages]
    x, y = _vectors([8])[0]
    dm.train_step(x, target=y)
    for stage, old in zip(dm.stages, before):
        moved = torch.cat([(p.detach() - q).flatten() for p, q in zip(stage.parameters(), old)])
        if any(p.grad is not None for p in stage.parameters()):
            assert 0 < float(moved.norm()) <= clip * (1 + 1e-4)


def test_epoch_schedules_step_once_per_epoch_and_follow_the_factory() -> None:
    dm = _mlp(scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1 / (1 + e)),
              scheduler_interval="epoch")  # fmt: skip
    history = dm.fit(_vectors([4, 4]), epochs=3, progress=False)
    assert [h.learning_rates["stage0"] for h in history] == pytest.approx([1e-3, 1e-3 / 2, 1e-3 / 3])
    assert all(s.scheduler.last_epoch == 3 for s in dm.stages)


def test_bf16_values_cross_cuts_in_bf16_and_losses_stay_fp32() -> None:
    dm = _cnn(precision="bf16")
    seen: list[torch.dtype] = []
    dm.stages[1].module.register_forward_pre_hook(lambda m, args: seen.extend(a.dtype for a in args))
    x, y = _images([6])[0]
    assert all(loss.dtype == torch.float32 for loss in dm.local_losses(x, target=y))
    losses = dm.train_step(x, target=y)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(math.isfinite(v) for v in losses.values())
    assert all(p.dtype == torch.float32 for p in dm.parameters())


@pytest.mark.timeout(120)
def test_bf16_trains_the_same_in_the_pipeline() -> None:
    data = _images([6, 6, 6, 6])
    with one_thread():
        piped, plain = _cnn(precision="bf16", accumulate=2), _cnn(precision="bf16", accumulate=2)
        piped.fit(data, progress=False)
        plain.fit(data, progress=False, pipelined=False)
    assert_same_state(piped, plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_scalers_trains_without_nan_on_cuda() -> None:
    dm = _cnn(precision="fp16", devices="cuda")
    assert all(isinstance(s.scaler, torch.amp.GradScaler) for s in dm.stages)
    history = dm.fit([(x.cuda(), y.cuda()) for x, y in _images([6] * 8)], epochs=2, progress=False)
    assert all(math.isfinite(v) for stats in history for v in stats.losses.values())
    state = dm.state_dict()
    assert all(stage["scaler"] is not None for stage in state["stages"])


# -- compile -----------------------------------------------------------------------------------
def _failing_backend(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
    raise RuntimeError("this backend always fails")


@pytest.mark.timeout(180)
def test_a_stage_that_fails_to_compile_warns_once_and_trains_eagerly() -> None:
    data = _images([6, 6, 6])
    with one_thread():
        eager = _cnn()
        eager.fit(data, progress=False, pipelined=False)
        compiled = _cnn(compile={"backend": _failing_backend})
        with pytest.warns(
            decouple.CompileFallbackWarning,
            match=r"stage \d: torch.compile of its module failed \(RuntimeError: this backend always fails\)",
        ) as w:
            compiled.fit(data, progress=False, pipelined=False)
    assert sorted(str(r.message).split(":")[0] for r in w if r.category is decouple.CompileFallbackWarning) == [
        "stage 0",
        "stage 1",
        "stage 2",
    ]
    assert_same_state(compiled, eager)  # the fallback is eager training, exactly


def _sgd(**kw: Any) -> dict[str, Any]:
    """SGD, not Adam: Adam turns rounding differences in a near-zero gradient into steps of size lr."""
    return {"optimizer": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9), **kw}


@pytest.mark.timeout(300)
def test_compiled_training_matches_eager() -> None:
    data = _images([6, 6, 6])
    with one_thread():
        eager = _cnn(**_sgd(scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.9)))
        eager.fit(data, progress=False, pipelined=False)
        compiled = _cnn(
            **_sgd(compile={"backend": "aot_eager"}, scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.9))
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", decouple.CompileFallbackWarning)
            compiled.fit(data, progress=False)
    for a, b in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_inductor_compiled_training_matches_eager() -> None:
    data = _images([6, 6, 6, 6])
    with one_thread():
        eager = _cnn(**_sgd())
        eager.fit(data, progress=False)
        compiled = _cnn(**_sgd(compile=True))
        with warnings.catch_warnings():
            warnings.simplefilter("error", decouple.CompileFallbackWarning)
            compiled.fit(data, progress=False)
    for a, b in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# -- bad settings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"accumulate": 0}, r"accumulate must be an int >= 1"),
        ({"precision": "bf61"}, r"unknown precision 'bf61'.*did you mean 'bf16'"),
        ({"precision": "fp16"}, r"precision='fp16' needs CUDA.*use precision='bf16' on CPU"),
        ({"scheduler": lambda opt: 3}, r"returned int, not a learning-rate scheduler.*CosineAnnealingLR"),
        ({"scheduler": lambda opt: None}, r"returned NoneType, not a learning-rate scheduler"),
        ({"scheduler": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}, r"ReduceLROnPlateau"),
        ({"scheduler_interval": "epochs"}, r"scheduler_interval must be.*did you mean 'epoch'"),
        ({"clip_grad_norm": -1.0}, r"clip_grad_norm must be a positive number"),
        ({"compile": "yes"}, r"compile must be True, False or a dict"),
    ],
)
def test_bad_training_settings_name_the_fix(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(decouple.ConfigError, match=match):
        _mlp(**kw)


def test_a_scheduler_instance_is_not_a_factory() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(decouple.ConfigError, match="factory called with each stage's optimizer"):
        _mlp(scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))
