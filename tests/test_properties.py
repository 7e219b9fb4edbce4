"""Properties of every conversion with every registered method, on random architectures and split choices.

(a) gradient isolation: each local loss reaches only its own stage's parameters (decoupled methods);
(b) transparency: the inference module computes exactly what the original model computes (for a
    method that replaces the head: what the stages and its exit head compute);
(c) accounting: training = inference + affiliated; inference = original (or, when the head is
    replaced, the original = the components + the replaced head).

A method added to the registry is checked by these tests with no change to them.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decouple

from .helpers import assert_gradient_isolation, registered_methods, small_options
from .models import MLP, ResCNN

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    """The properties every registered method must have, read from its registration's facts."""
    facts = decouple.METHODS[method]
    dm = decouple.convert(model, method=method, splits=splits, example_inputs=inputs, **small_options(method))
    assert dm.num_stages == len(splits) + (0 if facts.replaces_head else 1)

    model.eval()
    with torch.no_grad():
        expected = model(*inputs)
        inferred = dm.inference_module()(*inputs)
        dm.eval()
        if facts.replaces_head:  # inference answers through the last stage's exit head instead
            assert inferred.shape == expected.shape
            torch.testing.assert_close(dm(*inputs), inferred, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(inferred, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(dm(*inputs), expected, rtol=1e-5, atol=1e-6)
    dm.train()

    if not facts.end_to_end:
        assert_gradient_isolation(dm, *inputs, target=target)
    dm.train_step(*inputs, target=target)  # weights and running stats change
    if not facts.replaces_head:
        model.load_state_dict(dm.effective_state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(dm.inference_module()(*inputs), model(*inputs), rtol=1e-5, atol=1e-6)

    counts = dm.param_counts()
    original = sum(p.numel() for p in model.parameters())
    components = sum(p.numel() for s in dm.stages for p in s.module.parameters())
    assert counts.inference == counts.effective
    assert counts.training == counts.inference + counts.affiliated == sum(p.numel() for p in dm.parameters())
    assert counts.affiliated + counts.effective - components == sum(
        p.numel() for s in dm.stages for p in s.affiliated_parameters()
    )
    assert counts.original == original == components + counts.dropped
    if not facts.replaces_head:
        assert counts.inference == original and counts.dropped == 0


@pytest.mark.parametrize("method", registered_methods())
@SETTINGS
@given(case=st.one_of(mlp_case(), cnn_case()))
def test_every_method_isolates_stays_transparent_and_adds_up(method: str, case) -> None:
    _check_case(*case, method=method)


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
