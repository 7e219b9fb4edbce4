"""Properties of every conversion, on random architectures and random valid split choices.

(a) gradient isolation: each local loss reaches only its own stage's parameters;
(b) transparency: the inference module computes exactly what the original model computes;
(c) accounting: inference parameters = original parameters, training = inference + affiliated.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decouple

from .helpers import assert_gradient_isolation
from .models import MLP, ResCNN

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mlp_case(draw):
    depth = draw(st.integers(2, 5))
    widths = [draw(st.integers(3, 12)) for _ in range(depth + 1)]
    candidates = [f"layers.{i}" for i in range(depth)]
    chosen = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=depth, unique=True))
    splits = sorted(chosen, key=candidates.index)
    batch = draw(st.integers(5, 9))
    classes = draw(st.integers(2, 4))
    labels = torch.arange(batch) % classes  # every class at least twice: SupCon has positives
    return MLP(widths, classes), splits, (torch.randn(batch, widths[0]),), labels[torch.randperm(batch)]


@st.composite
def cnn_case(draw):
    blocks = draw(st.integers(1, 3))
    long_skip = draw(st.booleans())
    candidates = ["stem"]
    for b in range(blocks):
        candidates += [f"blocks.{b}.conv1", f"blocks.{b}.bn1", f"blocks.{b}.conv2"]
        if b < blocks - 1 or long_skip:
            candidates.append(f"blocks.{b}")
    chosen = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
    splits = sorted(chosen, key=candidates.index)
    batch = draw(st.integers(4, 8))
    model = ResCNN(channels=draw(st.sampled_from([4, 6])), blocks=blocks, num_classes=3, long_skip=long_skip)
    return model, splits, (torch.randn(batch, 3, 8, 8),), (torch.arange(batch) % 3)[torch.randperm(batch)]


def _check_case(model, splits, inputs, target, method: str) -> None:
    options = {"head_dims": (16, 8)} if method == "scl" else {}
    dm = decouple.convert(model, method=method, splits=splits, example_inputs=inputs, **options)
    assert dm.num_stages == len(splits) + 1

    model.eval()
    with torch.no_grad():
        expected = model(*inputs)
        torch.testing.assert_close(dm.inference_module()(*inputs), expected, rtol=1e-5, atol=1e-6)
        dm.eval()
        torch.testing.assert_close(dm(*inputs), expected, rtol=1e-5, atol=1e-6)
    dm.train()

    if method != "bp":
        assert_gradient_isolation(dm, *inputs, target=target)
    dm.train_step(*inputs, target=target)  # weights and running stats change
    model.load_state_dict(dm.effective_state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(dm.inference_module()(*inputs), model(*inputs), rtol=1e-5, atol=1e-6)

    counts = dm.param_counts()
    original = sum(p.numel() for p in model.parameters())
    assert counts.inference == original == counts.effective
    assert counts.training == counts.inference + counts.affiliated
    assert counts.training == sum(p.numel() for p in dm.parameters())


@SETTINGS
@given(mlp_case())
def test_mlp_properties(case) -> None:
    _check_case(*case, method="scl")


@SETTINGS
@given(cnn_case())
def test_residual_cnn_properties(case) -> None:
    _check_case(*case, method="scl")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cnn_case())
def test_backprop_baseline_is_transparent(case) -> None:
    _check_case(*case, method="bp")


def test_isolation_check_can_fail() -> None:
    """The isolation property detects leaks: backprop's loss reaches every stage."""
    model = MLP([6, 8, 8, 8], 3)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    dm = decouple.convert(model, method="bp", splits=["layers.0", "layers.1"], example_inputs=(x,))
    try:
        assert_gradient_isolation(dm, x, target=y)
    except AssertionError as exc:
        assert "other stages" in str(exc)
    else:
        raise AssertionError("end-to-end training passed the isolation check")
