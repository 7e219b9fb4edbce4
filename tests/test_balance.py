"""Balanced splits (convert(splits=N, balance=...)): local heads count, the choice is optimal, nothing leaks."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decouple
from decouple.compiler.candidates import candidate_splits
from decouple.compiler.cuts import Segment, choose_cuts, stage_costs

from .models import MLP, ResCNN


def _segments(components: list[float], heads: list[float]) -> list[Segment]:
    return [Segment(None, c, h) for c, h in zip(components, [*heads, 0.0])]


def test_a_heavy_head_moves_the_cut() -> None:
    assert choose_cuts(_segments([2, 2, 2, 2], [0, 0, 0]), 2) == [1]  # 4 | 4
    assert choose_cuts(_segments([2, 2, 2, 2], [0, 4, 0]), 2) == [0]  # 2 + 0 | 6 beats 4 + 4 | 4
    assert stage_costs(_segments([2, 2, 2, 2], [0, 4, 0]), [1]) == [8, 4]


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=2, max_size=7),
    stages=st.integers(2, 4),
)
def test_chosen_cuts_minimise_the_costliest_stage(data: list[tuple[int, int]], stages: int) -> None:
    segments = _segments([float(c) for c, _ in data], [float(h) for _, h in data[:-1]])
    if stages > len(segments):
        return
    cuts = choose_cuts(segments, stages)
    assert cuts == sorted(set(cuts)) and len(cuts) == stages - 1 and cuts[-1] < len(segments) - 1
    best = min(
        max(stage_costs(segments, list(c))) for c in itertools.combinations(range(len(segments) - 1), stages - 1)
    )
    assert max(stage_costs(segments, cuts)) == best
    costs = stage_costs(segments, cuts)
    assert sum(costs) == sum(s.component for s in segments) + sum(segments[i].head for i in cuts)


def _deep_mlp() -> MLP:
    return MLP([512] * 10, num_classes=10)


def test_heads_are_counted_in_the_stage_they_end() -> None:
    x = (torch.randn(8, 512),)
    dm = decouple.convert(_deep_mlp(), splits=2, example_inputs=x)
    candidates = candidate_splits(dm.program.partitions[True].trace, dm.program.root)
    cumulative = [0.0] + [c.flops_share for c in candidates] + [1.0]
    segments = [Segment(None, b - a, 0.0) for a, b in itertools.pairwise(cumulative)]  # components alone
    components_only = [candidates[i].name for i in choose_cuts(segments, 2)]
    chosen = [s.spec for s in dm.program.partitions[True].splits]
    # the head at the cut (512 -> 512 -> 1024) costs about three layers: stage 0 gives some up
    assert chosen != components_only
    assert int(chosen[0].split(".")[1]) < int(components_only[0].split(".")[1])
    shares = dm.balance.shares
    assert sum(shares) == pytest.approx(1.0) and max(shares) < 0.6


@pytest.mark.parametrize("kind", ["flops", "params", "time"])
def test_balance_is_reported_per_stage(kind: str) -> None:
    dm = decouple.convert(_deep_mlp(), splits=3, example_inputs=(torch.randn(8, 512),), balance=kind)
    counts = dm.param_counts()
    shares = [s.cost_share for s in counts.stages]
    assert shares == dm.balance.shares and sum(shares) == pytest.approx(1.0)
    assert any(note.startswith(f"splits balanced by {kind} (components and local heads)") for note in counts.notes)
    assert counts.as_dict()["stages"][0]["cost_share"] == shares[0]


def test_balance_by_params_counts_heads() -> None:
    dm = decouple.convert(_deep_mlp(), splits=2, example_inputs=(torch.randn(8, 512),), balance="params")
    per_stage = [s.training for s in dm.param_counts().stages]
    assert dm.balance.shares == pytest.approx([n / sum(per_stage) for n in per_stage])


def test_explicit_splits_have_no_balance() -> None:
    dm = decouple.convert(_deep_mlp(), splits=["layers.3"], example_inputs=(torch.randn(8, 512),))
    assert dm.balance is None and all(s.cost_share is None for s in dm.param_counts().stages)


def test_measuring_leaves_no_trace() -> None:
    """Balancing draws no random numbers, changes no buffer and leaves no gradient."""
    x = (torch.randn(4, 3, 8, 8),)
    torch.manual_seed(3)
    model = ResCNN(channels=4, blocks=3, num_classes=3, long_skip=False)
    balanced = decouple.convert(model, splits=3, example_inputs=x, balance="time", copy_model=False)
    after_balanced = torch.random.get_rng_state()
    names = [s.spec for s in balanced.program.partitions[True].splits]
    torch.manual_seed(3)
    model2 = ResCNN(channels=4, blocks=3, num_classes=3, long_skip=False)
    explicit = decouple.convert(model2, splits=names, example_inputs=x, copy_model=False)
    assert torch.equal(torch.random.get_rng_state(), after_balanced)
    for a, b in zip(balanced.state_dict()["stages"], explicit.state_dict()["stages"]):
        for key in a["module"]:
            assert torch.equal(a["module"][key], b["module"][key]), key
        for key in a["objective"]:
            assert torch.equal(a["objective"][key], b["objective"][key]), key
    assert all(p.grad is None for p in model.parameters())


def test_bad_balance_options_are_rejected() -> None:
    x = (torch.randn(8, 512),)
    with pytest.raises(decouple.ConfigError, match="unknown balance 'memory'"):
        decouple.convert(_deep_mlp(), splits=2, example_inputs=x, balance="memory")
    with pytest.raises(decouple.ConfigError, match="with explicit splits leave it out"):
        decouple.convert(_deep_mlp(), splits=["layers.2"], example_inputs=x, balance="time")
