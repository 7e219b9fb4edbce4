"""A method defined here, through the public API only, gets everything the built-in methods get.

``decouple.convert(method=make_objective)`` and ``decouple.register_method`` with a local
objective written in this file: partition, detach, train_step, the threaded pipeline (equal to
sequential), two ranks (equal to sequential), checkpoints, ``inference_module()``, exits,
``param_counts()``, the CLI's ``inspect`` and ``--method package.module:factory``; and every bad
input is a ``ConfigError`` naming the fix.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import decouple
from decouple import ConfigError, LocalObjective, LocalResult, StageInfo, cli

from .helpers import assert_gradient_isolation, one_thread
from .models import MLP, ResCNN
from .test_distributed import assert_same_state, run_as_threads, sequential


class Probe(LocalObjective):
    """A linear probe on the pooled representation plus a penalty on the representation's size."""

    def __init__(self, pool: nn.Module, dim: int, classes: int, weight: float) -> None:
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(dim, classes)
        self.weight = weight

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        h = self.pool(representation, **extras)
        logits = self.linear(h)
        loss = F.cross_entropy(logits, carry) + self.weight * h.pow(2).mean()
        return LocalResult(loss, carry, logits)


@dataclass(frozen=True)
class ProbeOptions(decouple.PoolOptions):
    weight: float = 0.01


def make_probe(info: StageInfo) -> Probe:
    weight = getattr(info.options, "weight", 0.01)
    return Probe(info.pool, info.pooled_dim, info.require_classes(), weight)


PROBE = decouple.register_method(
    "test_probe", make_probe, options=ProbeOptions, summary="a linear probe (tests)", replace=True
)


class ExitProbe(Probe):
    """A probe whose classifier answers at inference: an early exit."""

    def exit_head(self) -> nn.Module:
        return nn.Sequential(self.pool, self.linear)


class Reconstruct(LocalObjective):
    """Reads the model's input ``x`` (carried to the stage with the activations) and predicts it."""

    seen: list[torch.Tensor]

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.model_inputs = {"image": "x"}
        self.decoder = nn.Linear(dim, width)
        self.seen = []

    def forward(self, representation: Any, carry: Any, *, image: torch.Tensor, **extras: Any) -> LocalResult:
        self.seen.append(image)
        return LocalResult(F.mse_loss(self.decoder(representation), image), carry)


def _mlp_case(seed: int = 0) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return MLP([8, 12, 12, 12], num_classes=4), torch.randn(8, 8), torch.arange(8) % 4


def _batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 8, generator=g), torch.arange(8) % 4) for _ in range(n)]


def _convert(method: Any = make_probe, seed: int = 0, **kw: Any) -> decouple.DecoupledModel:
    model, x, _ = _mlp_case(seed)
    return decouple.convert(model, method=method, splits=["layers.0", "layers.1"], example_inputs=(x,), **kw)


def test_a_callable_trains_isolated_stages_and_infers_like_the_model() -> None:
    model, x, y = _mlp_case()
    dm = decouple.convert(model, method=make_probe, splits=["layers.0", "layers.1"], example_inputs=(x,))
    assert dm.method == "make_probe" and dm.num_stages == 3
    assert [type(s.objective).__name__ for s in dm.stages] == ["Probe", "Probe", "TaskObjective"]
    assert_gradient_isolation(dm, x, target=y)
    first = dm.train_step(x, target=y)
    for _ in range(20):
        last = dm.train_step(x, target=y)
    assert set(first) == {"stage0", "stage1", "stage2"} and all(last[k] < first[k] for k in first)
    model.eval()
    model.load_state_dict(dm.effective_state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(dm.inference_module()(x), model(x))
    counts = dm.param_counts()
    probes = sum(p.numel() for s in dm.stages[:2] for p in s.objective.parameters())
    assert counts.affiliated == probes == 2 * (12 * 4 + 4)
    assert counts.inference == counts.original == sum(p.numel() for p in model.parameters())


def test_a_registered_method_takes_its_options_by_name() -> None:
    dm = _convert("test_probe", weight=0.5)
    assert dm.method == "test_probe" and dm.stages[0].objective.weight == 0.5
    assert decouple.METHODS["test_probe"] is PROBE


def test_the_pipeline_equals_sequential_training() -> None:
    data = _batches()
    reference = sequential(_convert(), data)
    piped = _convert()
    with one_thread(), piped.pipeline(depth=2) as pipe:
        for x, y in data:
            pipe.submit(x, target=y)
        pipe.drain()
    assert_same_state(piped, reference)


def test_two_ranks_equal_sequential_training() -> None:
    data = _batches()
    reference = sequential(_convert(), data)
    dm = _convert()
    run_as_threads(dm, data)
    assert_same_state(dm, reference)


def test_state_dict_round_trips_and_resumes_exactly() -> None:
    data = _batches(6)
    straight = sequential(_convert(), data)
    buffer = io.BytesIO()
    torch.save(sequential(_convert(), data[:3]).state_dict(), buffer)
    buffer.seek(0)
    resumed = _convert(seed=7)  # other initial weights: the checkpoint must overwrite them
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    sequential(resumed, data[3:])
    assert resumed.steps == straight.steps == 6
    assert_same_state(resumed, straight)


def test_an_exit_head_serves_exits_and_early_exit_inference() -> None:
    def make(info: StageInfo) -> ExitProbe:
        return ExitProbe(info.pool, info.pooled_dim, info.require_classes(), 0.0)

    model, x, y = _mlp_case()
    dm = decouple.convert(model, method=make, splits=["layers.0", "layers.1"], example_inputs=(x,))
    dm.train_step(x, target=y)
    model.load_state_dict(dm.effective_state_dict())
    model.eval()
    with torch.no_grad():
        h = model.layers[0](x)
        torch.testing.assert_close(dm.inference_module(exit=1)(x), dm.stages[0].objective.linear(h))
        everyone = dm.inference_module(exit_threshold=0.0)
        torch.testing.assert_close(everyone(x), dm.inference_module(exit=1)(x))
        assert everyone.usage == [1.0, 0.0, 0.0]
    assert dm.param_counts(exit_threshold=0.5).affiliated == 0


def test_a_method_that_replaces_the_head_answers_through_its_last_exit() -> None:
    def make(info: StageInfo) -> ExitProbe:
        return ExitProbe(info.pool, info.pooled_dim, info.require_classes(), 0.0)

    method = decouple.Method("probe_head", make, replaces_head=True)
    model, x, _ = _mlp_case()
    dm = decouple.convert(model, method=method, splits=["layers.0", "layers.1"], example_inputs=(x,))
    assert dm.num_stages == 2 and all(s.objective is not None for s in dm.stages)
    counts = dm.param_counts()
    replaced = [*model.layers[2].parameters(), *model.head.parameters()]  # after the last split
    assert counts.dropped == sum(p.numel() for p in replaced)
    assert any("replaces the model's head (layers.2, head)" in note for note in counts.notes)
    dm.eval()
    with torch.no_grad():
        h = model.eval().layers[1](model.layers[0](x))
        expected = dm.stages[1].objective.linear(h)
        torch.testing.assert_close(dm.inference_module()(x), expected)
        torch.testing.assert_close(dm(x), expected)


def test_model_inputs_travel_with_the_activations() -> None:
    recons: list[Reconstruct] = []

    def make(info: StageInfo) -> Reconstruct:
        recons.append(Reconstruct(info.pooled_dim, int(info.inputs["x"].shape[1])))
        return recons[-1]

    model, x, y = _mlp_case()
    dm = decouple.convert(model, method=make, splits=["layers.0", "layers.1"], example_inputs=(x,))
    assert dm.stages[1].objective_extras == {"image": "x"}
    assert "x" in dm.stages[0].io[True].message_out  # carried past stage 0 to stage 1's objective
    assert_gradient_isolation(dm, x, target=y)
    dm.train_step(x, target=y)
    assert all(torch.equal(r.seen[-1], x) for r in recons)


def test_the_cli_takes_a_method_by_name_or_by_factory(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["tests.cli_models:tiny_net", "--input-shape", "4,3,8,8", "--num-classes", "4", "--splits", "stem,blocks.0"]
    for spec in ("tests.test_custom_method:make_probe", "test_probe"):
        assert cli.main(["inspect", *base, "--method", spec, "--option", "pool=avg", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["stages"][0]["objective"].startswith("Probe")
        assert data["training"] == data["inference"] + data["affiliated"]
    assert cli.main(["inspect", *base, "--method", "test_probe", "--option", "weight=0.5"]) == 0
    assert "Probe" in capsys.readouterr().out
    assert cli.main(["inspect", *base, "--method", "tests.test_custom_method:nothing_here"]) == 2
    assert "has no attribute 'nothing_here'" in capsys.readouterr().err


class NotAnObjective(nn.Module):
    def forward(self, representation: Any, carry: Any) -> torch.Tensor:
        return representation.sum()


class ReturnsATensor(LocalObjective):
    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        return representation.pow(2).mean()  # type: ignore[return-value]


def test_bad_methods_raise_config_errors_that_name_the_fix() -> None:
    model, x, y = _mlp_case()
    with pytest.raises(ConfigError, match=r"returned NotAnObjective for stage 0; return a decouple.LocalObjective"):
        _convert(lambda info: NotAnObjective())
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'wieght' for method 'test_probe'.*weight"):
        _convert("test_probe", wieght=1.0)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'temperature' for method 'make_probe'"):
        _convert(make_probe, temperature=0.1)
    with pytest.raises(ConfigError, match=r"method 'scl' is already registered.*choose another name"):
        decouple.register_method("scl", make_probe)
    assert decouple.METHODS["scl"].make_objective is not make_probe
    shared = Probe(nn.Identity(), 12, 4, 0.0)
    with pytest.raises(ConfigError, match="returned the same Probe for stage 1 as for an earlier stage"):
        _convert(lambda info: shared)
    with pytest.raises(ConfigError, match="holds parameters of the model itself"):
        decouple.convert(
            model, method=lambda info: _Borrow(model.head), splits=["layers.0"], example_inputs=(x,), copy_model=False
        )
    with pytest.raises(ConfigError, match="must be a dataclass type"):
        decouple.register_method("bad_options", make_probe, options=dict)
    with pytest.raises(ConfigError, match="unknown method 'sc'.*'scl'"):
        _convert("sc")
    dm = _convert(lambda info: ReturnsATensor())
    with pytest.raises(ConfigError, match=r"returned Tensor; its forward must return decouple.LocalResult"):
        dm.train_step(x, target=y)


class _Borrow(LocalObjective):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        return LocalResult(self.layer(representation).sum(), carry)


def test_a_head_that_reads_a_feature_map_gets_its_shape() -> None:
    seen: list[StageInfo] = []

    def make(info: StageInfo) -> Probe:
        seen.append(info)
        return Probe(info.pool, info.pooled_dim, info.require_classes(), 0.0)

    x = torch.randn(4, 3, 8, 8)
    model = ResCNN(channels=4, blocks=2, num_classes=3, long_skip=False)
    decouple.convert(model, method=make, splits=["blocks.0"], example_inputs=(x,))
    (info,) = seen
    assert info.index == 0 and info.num_stages == 2 and not info.last and info.feature_map
    assert tuple(info.example.shape) == (4, 4, 8, 8) and info.num_classes == 3 and info.mask is None
    assert list(info.inputs) == ["x"] and tuple(info.inputs["x"].shape) == (4, 3, 8, 8)
    assert info.pooled_dim == 4 * 4 * 4 and info.previous == () and info.method == "make"


def test_a_head_at_a_multi_tensor_cut_reads_every_crossing_tensor_or_the_main_one() -> None:
    seen: list[StageInfo] = []

    def make(info: StageInfo) -> Probe:
        seen.append(info)
        return Probe(info.pool, info.pooled_dim, info.require_classes(), 0.0)

    x = torch.randn(4, 3, 8, 8)
    model = ResCNN(channels=4, blocks=2, num_classes=3)  # the long skip crosses the cut beside blocks.0's output
    dm = decouple.convert(model, method=make, splits=["blocks.0"], example_inputs=(x,))
    every = seen.pop()
    assert isinstance(every.representation, tuple) and len(every.representation) == 2
    assert tuple(every.example.shape) == (4, 4, 8, 8) and every.pooled_dim == 2 * 4 * 4 * 4
    dm.train_step(x, target=torch.arange(4) % 3)
    decouple.convert(model, method=make, splits=["blocks.0"], example_inputs=(x,), crossing="main")
    main = seen.pop()
    assert tuple(main.example.shape) == (4, 4, 8, 8) and main.pooled_dim == 4 * 4 * 4


def test_the_readme_example_runs() -> None:
    """The README's "Your own method" example, as printed there, on torchvision's resnet18."""
    import re
    from pathlib import Path

    import torchvision

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code is not None
    x = torch.randn(4, 3, 32, 32)
    scope: dict[str, Any] = {"model": torchvision.models.resnet18(num_classes=10), "x": x}
    try:
        exec(compile(code.group(1), "README.md", "exec"), scope)
        dm = scope["dm"]
        assert dm.method == "probe" and dm.num_stages == 3
        assert all(type(s.objective).__name__ == "LinearProbe" for s in dm.stages[:-1])
        losses = dm.train_step(x, target=torch.arange(4) % 10)
        assert set(losses) == {"stage0", "stage1", "stage2"}
        assert dm.inference_module(exit=1)(x).shape == (4, 10)
    finally:
        decouple.METHODS.pop("probe", None)
