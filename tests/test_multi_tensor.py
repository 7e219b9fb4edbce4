"""Split points where several per-sample tensors cross: two streams, a class token beside the patches."""

from __future__ import annotations

import pytest
import torch

import decouple
from decouple.cli.tables import splits_tables
from decouple.compiler.candidates import candidate_splits
from decouple.inspection import describe_splits, trace_models
from decouple.objectives.pools import ConcatPool

from .helpers import assert_gradient_isolation, assert_inference_equals_original, one_thread
from .models import ClassToken, TwoStream

CASES = {
    "two_stream": (TwoStream, lambda n: torch.randn(n, 6)),
    "class_token": (ClassToken, lambda n: torch.randn(n, 5, 4)),
}


def test_multi_tensor_points_come_after_single_tensor_points_and_are_marked() -> None:
    model, x = ClassToken(), torch.randn(2, 5, 4)
    traces = trace_models(model, (x,))
    single = candidate_splits(traces[True], model)
    listed = candidate_splits(traces[True], model, several=True)
    assert [c.name for c in single] == ["blocks.2"]  # after the last block only the class token crosses
    assert listed[: len(single)] == single and all(c.crossing for c in listed[len(single) :])
    assert {c.name for c in listed[len(single) :]} >= {"blocks.0", "blocks.1"}
    report = describe_splits(model, traces[True], 4, example_inputs=(x,), eval_trace=traces[False])
    table = splits_tables(report)[0]
    assert "several cross the 4 listed after them" in str(table.title)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("method", ["scl", "early_exit", "al"])
def test_splits_n_balances_over_multi_tensor_points(name: str, method: str) -> None:
    build, inputs = CASES[name]
    model, x, y = build(), inputs(6), torch.arange(6) % 3
    dm = decouple.convert(model, method, splits=4, example_inputs=(inputs(2),), head_dims=(16, 16)) if method == "scl" \
        else decouple.convert(model, method, splits=4, example_inputs=(inputs(2),))  # fmt: skip
    assert dm.num_stages == 4 - (method == "al")
    heads = [s.objective for s in dm.stages if s.objective is not None and s.index < dm.num_stages - 1]
    pools = [h.pool if method == "scl" else (h.bridge.pool if method == "al" else h.classifier.pool) for h in heads]
    assert any(isinstance(p, ConcatPool) for p in pools)  # the head pools every tensor crossing its cut
    assert_inference_equals_original(model, dm, method, x)
    if method == "early_exit":
        with torch.no_grad():
            assert dm.inference_module(exit=1)(x).shape == (6, 3)  # an exit reads both crossing tensors
    dm.train()
    assert_gradient_isolation(dm, x, target=y)
    weights = dm.effective_state_dict()
    target = dm.inference_module() if method == "al" else build()
    target.load_state_dict(weights, strict=True)


def test_the_head_can_read_the_main_tensor_only() -> None:
    model, x = TwoStream(), torch.randn(2, 6)
    both = decouple.convert(model, "scl", ["a.1"], (x,), head_dims=(16, 16))
    main = decouple.convert(model, "scl", ["a.1"], (x,), head_dims=(16, 16), crossing="main")
    assert isinstance(both.stages[0].objective.pool, ConcatPool)
    assert both.stages[0].objective.projector[0].in_features == 16  # both streams, 8 features each
    assert main.stages[0].objective.projector[0].in_features == 8
    with pytest.raises(decouple.ConfigError, match="crossing must be 'all'"):
        decouple.convert(model, "scl", ["a.1"], (x,), crossing="both")


def test_pipelined_training_equals_sequential_at_a_multi_tensor_cut() -> None:
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    runs = []
    for pipelined in (False, True):
        torch.manual_seed(0)
        dm = decouple.convert(TwoStream(), "scl", ["a.1", "b.2"], (x[:2],), head_dims=(16, 16))
        with one_thread():
            if pipelined:
                with dm.pipeline() as pipe:
                    for _ in range(2):
                        pipe.submit(x, target=y)
                    pipe.drain()
            else:
                for _ in range(2):
                    dm.train_step(x, target=y)
        runs.append(dm.effective_state_dict())
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


def test_cli_and_convert_agree_on_multi_tensor_points() -> None:
    model, x = ClassToken(), torch.randn(2, 5, 4)
    traces = trace_models(model, (x,))
    report = describe_splits(model, traces[True], 3, example_inputs=(x,), eval_trace=traces[False])
    dm = decouple.convert(model, "scl", splits=3, example_inputs=(x,))
    assert report.suggested == dm.balance.splits
