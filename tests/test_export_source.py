"""Standalone source export: every exported module reproduces the module it was written from."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import decouple
from decouple.errors import ExportError
from decouple.objectives.pools import ConcatPool

from .cli_models import NumpyNet, TiedPair, tiny_net
from .models import FunctionalDropout, ResCNN

_names = itertools.count()


def load_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_exported_test_{next(_names)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_stages_reproduced(dm: Any, folder: Path, x: torch.Tensor) -> None:
    """Exported stage k, fed the message stage k receives, returns what the generated stage k returns.

    Eval mode first: a training-mode run updates the running statistics of the generated stages.
    """
    for training in (False, True):
        dm.train(training)
        message = {dm.stages[0].io[training].inputs[0]: x}
        for stage in dm.stages:
            suffix = "" if training or stage.eval_module is stage.module else "_eval"
            exported = load_file(folder / f"stage{stage.index}{suffix}.py").load().train(training)
            io = stage.io[training]
            args = [message[name] for name in io.inputs]
            with torch.no_grad():
                torch.manual_seed(stage.index)
                want = stage.graph_module(*args)
                torch.manual_seed(stage.index)
                got = exported(*args)
            torch.testing.assert_close(got, want)
            if not io.last:
                message = {name: want.get(name, message.get(name)) for name in io.message_out}


@pytest.mark.parametrize(
    ("factory", "splits", "shape", "options"),
    [
        (
            lambda: ResCNN(channels=4, blocks=3),
            ["blocks.0", "blocks.1"],
            (4, 3, 8, 8),
            {},
        ),  # a long skip crosses both cuts
        (FunctionalDropout, ["a", "b"], (4, 10), {}),  # train and eval graphs differ
        (lambda: tiny_net(num_classes=3), ["stem", "blocks.0"], (4, 3, 8, 8), {"leaf_modules": ["blocks.1"]}),
    ],
)
def test_exported_stages_reproduce_the_generated_ones(
    factory: Any, splits: list[str], shape: tuple[int, ...], options: dict[str, Any], tmp_path: Path
) -> None:
    x = torch.randn(*shape)
    dm = decouple.convert(factory(), splits=splits, example_inputs=(x,), **options)
    result = decouple.export_source(dm, tmp_path, example_inputs=(x,))
    assert result.max_abs_diff == 0.0
    assert_stages_reproduced(dm, tmp_path, x)
    eval_files = {f.source for f in result.files if f.role == "stage_eval"}
    assert bool(eval_files) == (dm.program.partitions[True] is not dm.program.partitions[False])


def test_exported_inference_keeps_the_original_state_dict_keys(tmp_path: Path) -> None:
    model = ResCNN(channels=4, blocks=2)
    dm = decouple.convert(model, splits=["blocks.0"], example_inputs=(torch.randn(2, 3, 8, 8),))
    decouple.export_source(dm, tmp_path)
    weights = torch.load(tmp_path / "inference.pt", weights_only=True)
    assert set(weights) == set(model.state_dict())
    exported = load_file(tmp_path / "inference.py").load()
    fresh = ResCNN(channels=4, blocks=2)
    fresh.load_state_dict(exported.state_dict(), strict=True)


def test_heads_hold_the_objectives_weights(tmp_path: Path) -> None:
    x = torch.randn(4, 3, 8, 8)
    dm = decouple.convert(ResCNN(channels=4, blocks=2), splits=["stem", "blocks.0"], example_inputs=(x,))
    decouple.export_source(dm, tmp_path)
    h = torch.randn(4, 4, 8, 8)
    for stage in dm.stages[:-1]:
        heads = load_file(tmp_path / f"stage{stage.index}_heads.py").load()
        objective = stage.objective
        several = stage.index == 1  # the long skip crosses the second cut beside blocks.0's output
        assert isinstance(objective.pool, ConcatPool) == several
        h = (h, torch.randn(4, 4, 8, 8)) if several else h
        assert heads.state_dict().keys() == objective.state_dict().keys()
        with torch.no_grad():
            torch.testing.assert_close(heads.projector(heads.pool(h)), objective.projector(objective.pool(h)))
    assert not (tmp_path / f"stage{dm.num_stages - 1}_heads.py").exists()


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    x = torch.randn(4, 6)
    dm = decouple.convert(TiedPair(), splits=["first"], example_inputs=(x,))
    decouple.export_source(dm, tmp_path, example_inputs=(x,))
    stage = load_file(tmp_path / "stage1.py").load()
    assert stage.a.weight is stage.b.weight
    assert_stages_reproduced(dm, tmp_path, x)


class LSTMClassifier(nn.Module):
    """The papers' text model: embedding, bidirectional LSTM, MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.lstm = nn.LSTM(16, 12, batch_first=True, bidirectional=True)
        self.mid = nn.Linear(24, 24)
        self.out = nn.Linear(24, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(ids))
        return self.out(torch.relu(self.mid(h[:, -1])))


def test_an_lstm_is_rebuilt_by_its_constructor(tmp_path: Path) -> None:
    ids = torch.randint(0, 30, (4, 7))
    dm = decouple.convert(LSTMClassifier(), splits=["embed", "lstm"], example_inputs=(ids,))
    decouple.export_source(dm, tmp_path, example_inputs=(ids,))
    assert "nn.LSTM(16, 12, batch_first=True, bidirectional=True)" in (tmp_path / "stage1.py").read_text()
    assert_stages_reproduced(dm, tmp_path, ids)


class WithStochasticDepth(nn.Module):
    """torchvision's stochastic depth is an fx-wrapped free function: its source must be carried."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 8)
        self.drop = torchvision.ops.StochasticDepth(0.5, "row")
        self.c = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.c(h + self.drop(self.b(h)))


def test_library_functions_the_graph_calls_are_carried(tmp_path: Path) -> None:
    x = torch.randn(6, 4)
    dm = decouple.convert(WithStochasticDepth(), splits=["a"], example_inputs=(x,))
    decouple.export_source(dm, tmp_path, example_inputs=(x,))
    code = (tmp_path / "stage1.py").read_text()
    assert "def stochastic_depth(" in code and "torchvision" not in "".join(
        line for line in code.splitlines() if "import" in line
    )
    assert_stages_reproduced(dm, tmp_path, x)


class MixedPrecision(nn.Module):
    """A float64 layer (its constructor cannot rebuild it as printed) and an attention leaf module."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.b = nn.Linear(8, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.b(h.double()).mean(dim=1)


def test_modules_the_printed_constructor_cannot_rebuild_are_restored(tmp_path: Path) -> None:
    x = torch.randn(2, 5, 4)
    dm = decouple.convert(MixedPrecision(), splits=["a"], example_inputs=(x,))
    decouple.export_source(dm, tmp_path, example_inputs=(x,))
    code = (tmp_path / "stage1.py").read_text()
    assert "_restore(nn.MultiheadAttention" in code and "torch.float64" in code
    assert_stages_reproduced(dm, tmp_path, x)


def test_code_outside_torch_is_refused(tmp_path: Path) -> None:
    dm = decouple.convert(NumpyNet(), splits=["a"], example_inputs=(torch.randn(2, 4),))
    with pytest.raises(ExportError, match="numpy.*only torch and the standard library"):
        decouple.export_source(dm, tmp_path)


def test_export_into_a_file_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("")
    dm = decouple.convert(ResCNN(channels=4, blocks=1), splits=["stem"], example_inputs=(torch.randn(2, 3, 8, 8),))
    with pytest.raises(ExportError, match="not a folder"):
        decouple.export_source(dm, target)


def test_reporting_and_exporting_leave_training_modes_alone(tmp_path: Path) -> None:
    dm = decouple.convert(ResCNN(channels=4, blocks=2), splits=["blocks.0"], example_inputs=(torch.randn(2, 3, 8, 8),))
    modes = {name: m.training for name, m in dm.named_modules()}
    assert all(modes.values())
    dm.param_counts()
    dm.inference_module()
    decouple.export_source(dm, tmp_path)
    assert {name: m.training for name, m in dm.named_modules()} == modes


@pytest.mark.cuda
def test_stages_on_a_gpu_export_cpu_weights(tmp_path: Path) -> None:
    x = torch.randn(4, 3, 8, 8)
    dm = decouple.convert(ResCNN(channels=4, blocks=2), splits=["blocks.0"], example_inputs=(x,), devices=["cuda:0"])
    result = decouple.export_source(dm, tmp_path, example_inputs=(x.cuda(),))
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    for f in result.files:
        assert all(t.device.type == "cpu" for t in torch.load(tmp_path / f.weights, weights_only=True).values())
