"""The paper-comparison examples, run in-process on tiny settings, and the pieces they share (models, data, tables)."""

from __future__ import annotations

import csv
import importlib.util
import json
import pickle
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import decouple
from decouple.errors import ConfigError
from decouple.experiments import RunResult, evaluate, train_and_evaluate
from decouple.experiments.image_data import image_data
from decouple.experiments.models import ARCHITECTURES, get_architecture
from decouple.experiments.results import accuracy_table, parameter_table, plot_curves, read_epochs_csv, write_epochs_csv

from .helpers import assert_gradient_isolation

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--train-limit", "96", "--test-limit", "64", "--batch-size", "32", "--no-progress"]


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Models


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_every_architecture_splits_into_isolated_stages(name: str, channels: int, size: int) -> None:
    arch = get_architecture(name)
    model = arch.build(channels, 7, size, width=4)
    x, y = torch.randn(6, channels, size, size), torch.tensor([0, 1, 2, 0, 1, 2])
    assert model(x).shape == (6, 7)
    dm = decouple.convert(model, "scl", arch.splits_for(), example_inputs=(x,), head="linear")
    assert dm.num_stages == len(arch.splits) + 1
    assert_gradient_isolation(dm, x, target=y)
    assert arch.splits_for(2) == list(arch.splits[:1])
    # associated learning trains every block and replaces the classifier alone
    al = decouple.convert(model, "al", arch.splits_for(method="al"), example_inputs=(x,), num_classes=7)
    dropped = al.param_counts().dropped
    assert dropped == sum(p.numel() for p in model.classifier.parameters())


def test_architecture_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="did you mean 'vgg'"):
        get_architecture("vgg11")
    with pytest.raises(ConfigError, match="2 to 4 stages"):
        get_architecture("convnet").splits_for(9)
    with pytest.raises(ConfigError, match="2 to 3 stages for method 'al'"):
        get_architecture("convnet").splits_for(4, method="al")
    with pytest.raises(ConfigError, match="at least 16 pixels"):
        get_architecture("vgg").build(3, 10, 8)


# ---------------------------------------------------------------------------------------------
# Data


def write_fake_cifar(root: Path, name: str, per_file: int = 60) -> None:
    """Tiny files in torchvision's CIFAR layout (random images, labels cycling over the classes)."""
    cls = (
        __import__("torchvision").datasets.CIFAR10 if name == "cifar10" else __import__("torchvision").datasets.CIFAR100
    )
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    classes = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(0)
    for filename, _ in cls.train_list + cls.test_list:
        entry = {
            "data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            "labels": [i % classes for i in range(per_file)],
        }
        (folder / filename).write_bytes(pickle.dumps(entry))
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: [f"class{i}" for i in range(classes)]}))


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)  # the md5 sums of the real files
    write_fake_cifar(tmp_path, "cifar10")
    write_fake_cifar(tmp_path, "cifar100")
    return tmp_path


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_loads_through_torchvision_into_normalised_tensors(fake_cifar: Path, name: str, classes: int) -> None:
    data = image_data(name, data_root=str(fake_cifar), batch_size=16, train_limit=50, seed=0, download=True)
    assert (data.num_classes, data.channels, data.size) == (classes, 3, 32)
    x, y = next(iter(data.train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.5  # uniform pixels, standardised with the CIFAR statistics
    assert len(data.train.dataset) == 50 and len(data.test.dataset) == 60
    assert data.augment(x, torch.Generator().manual_seed(0)).shape == x.shape


def test_data_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --data-root"):
        image_data("cifar10")
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        image_data("cifar11")
    with pytest.raises(ConfigError, match="cannot load cifar10"):
        image_data("cifar10", data_root=str(tmp_path), download=False)


# ---------------------------------------------------------------------------------------------
# Runs and tables


def _run(label: str, method: str, arch: str, seed: int, accs: list[float]) -> RunResult:
    return RunResult(arch=arch, method=method, seed=seed, label=label, test_accuracy=accs, seconds=1.0)


def test_accuracy_table_marks_the_best_and_those_above_bp() -> None:
    runs = [
        _run("bp", "bp", "convnet", 0, [0.5, 0.90]), _run("bp", "bp", "convnet", 1, [0.5, 0.92]),
        _run("scl", "scl", "convnet", 0, [0.6, 0.93]), _run("scl", "scl", "convnet", 1, [0.6, 0.95]),
        _run("al", "al", "convnet", 0, [0.4, 0.80]), _run("al", "al", "convnet", 1, [0.4, 0.82]),
        _run("scl", "scl", "vgg", 0, [0.7, 0.70]), _run("al", "al", "vgg", 0, [0.7, 0.70]),
    ]  # fmt: skip
    table = accuracy_table(runs, {"convnet": "Vanilla ConvNet"})
    lines = table.splitlines()
    assert lines[0].split() == ["test", "accuracy", "(%)", "Vanilla", "ConvNet", "vgg"]
    assert lines[2].split()[:4] == ["bp", "91.00", "±", "1.41"] and lines[2].split()[-1] == "-"
    assert "94.00 ± 1.41*†" in lines[3] and "70.00 ± 0.00*" in lines[3]
    assert "81.00 ± 1.41 " in lines[4] and "70.00 ± 0.00*" in lines[4]  # a tie shares the mark
    assert "over 2 seed(s)" in lines[-1]


def test_run_on_real_data_writes_csv_and_figure(tmp_path: Path) -> None:
    data = image_data("mnist", batch_size=32, train_limit=64, test_limit=40, seed=0)
    model = get_architecture("convnet").build(1, 10, 28, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result, dm = train_and_evaluate(model, "scl", ["block1"], data.train, data.test, epochs=2, example=data.example,
                                    arch="convnet", progress=False)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the model itself is not trained"
    assert len(result.test_accuracy) == 2 and len(result.losses) == 2 and set(result.losses[0]) == {"stage0", "stage1"}
    assert result.test_accuracy[-1] == evaluate(dm.inference_module(), data.test)
    assert [group["lr"] for group in dm.stages[0].optimizer.param_groups] == [
        0.0
    ]  # cosine annealed to 0 after the last epoch
    rows = read_csv(write_epochs_csv([result], tmp_path / "epochs.csv"))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[1]["test_accuracy"] == f"{result.final:.4f}"
    assert "stage0=" in rows[0]["local_losses"]
    (again,) = read_epochs_csv(tmp_path / "epochs.csv")
    assert again.test_accuracy == pytest.approx(result.test_accuracy, abs=1e-4) and again.label == "scl"
    assert again.losses[1] == pytest.approx(result.losses[1], abs=1e-4)
    png = plot_curves([result], tmp_path / "curves.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "convnet training" in parameter_table([result]).splitlines()[0]


# ---------------------------------------------------------------------------------------------
# The examples


@pytest.mark.parametrize("name", ["vision_compare", "short_vs_long_flows", "projection_heads"])
def test_example_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_example(name).main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--seed", "--out", "--device", "--epochs", "--batch-size", "--dataset", "--data-root"):
        assert flag in out


def test_vision_compare_writes_tables_csv_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    methods = ["bp", "early_exit", "al", "scl"]
    out_dir = tmp_path / "out"
    threads = torch.get_num_threads()
    code = load_example("vision_compare").main(
        [
            "--archs",
            "convnet",
            "--methods",
            ",".join(methods),
            "--seeds",
            "2",
            "--out",
            str(out_dir),
            "--cores",
            "2",
            *TINY,
        ]
    )
    assert code == 0
    assert torch.get_num_threads() == threads, "the runs restore torch's thread count"
    printed = capsys.readouterr().out
    for name in ("accuracy_per_epoch.csv", "summary.csv", "tables.txt", "accuracy_vs_epoch.png", "config.json"):
        assert (out_dir / name).is_file(), name
    rows = read_csv(out_dir / "accuracy_per_epoch.csv")
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted((m, s) for m in methods for s in ("0", "1"))
    summary = {r["method"]: r for r in read_csv(out_dir / "summary.csv")}
    assert summary["bp"]["training_params"] == summary["bp"]["inference_params"]
    assert (
        int(summary["scl"]["training_params"])
        > int(summary["scl"]["inference_params"])
        == int(summary["bp"]["inference_params"])
    )
    assert "Vanilla ConvNet" in printed and "±" in printed and "training" in printed
    # times side by side come from the same two cores, and the summary says how each run used them
    assert summary["bp"]["compute"] == "2 intra-op threads"
    assert summary["scl"]["compute"] == "4 stage threads x 1 intra-op thread on 2 cores"
    assert "s, 2 intra-op threads)" in printed


def test_vision_compare_runs_every_registered_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--archs", "convnet", "--methods", "all", "--seeds", "1", "--out", str(tmp_path), *TINY]
    assert load_example("vision_compare").main([*args, "--option", "deinfo:head_dims=[32,32]"]) == 0
    summary = {r["method"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert list(summary)[:4] == ["bp", "early_exit", "al", "scl"] and set(summary) == set(decouple.METHODS)
    inference = int(summary["bp"]["inference_params"])
    for method, row in summary.items():
        facts = decouple.METHODS[method]
        assert (int(row["inference_params"]) == inference) != facts.replaces_head, method
        assert (int(row["training_params"]) > inference) != facts.end_to_end, method
    printed = capsys.readouterr().out
    assert all(f"\n{m} " in printed for m in ("dgl", "predsim", "infopro", "deinfo"))


def test_vision_compare_is_deterministic_with_seed(tmp_path: Path) -> None:
    example = load_example("vision_compare")
    for run in ("a", "b"):
        assert (
            example.main(
                [
                    "--archs",
                    "demo",
                    "--methods",
                    "scl",
                    "--seeds",
                    "1",
                    "--seed",
                    "3",
                    "--out",
                    str(tmp_path / run),
                    *TINY,
                ]
            )
            == 0
        )
    first, second = (read_csv(tmp_path / run / "accuracy_per_epoch.csv") for run in ("a", "b"))
    assert first == second


def test_vision_compare_on_cifar_and_with_two_views(fake_cifar: Path, tmp_path: Path) -> None:
    args = ["--dataset", "cifar10", "--data-root", str(fake_cifar), "--archs", "convnet", "--methods", "scl", "--seeds", "1",
            "--views", "2", "--out", str(tmp_path), *TINY[:2], "--train-limit", "40", "--test-limit", "20", "--no-progress"]  # fmt: skip
    assert load_example("vision_compare").main(args) == 0
    assert len(read_csv(tmp_path / "accuracy_per_epoch.csv")) == 1


def test_vision_compare_refuses_cuda_without_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_example("vision_compare").main(["--device", "cuda", "--out", str(tmp_path), *TINY])


@pytest.mark.cuda
def test_vision_compare_on_cuda(tmp_path: Path) -> None:
    assert (
        load_example("vision_compare").main(
            [
                "--device",
                "cuda",
                "--archs",
                "convnet",
                "--methods",
                "bp,scl",
                "--seeds",
                "1",
                "--out",
                str(tmp_path),
                *TINY,
            ]
        )
        == 0
    )


def test_short_vs_long_flows_trains_all_three_flows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("short_vs_long_flows")
    assert example.main(["--seeds", "1", "--out", str(tmp_path), *TINY]) == 0
    labels = {r["label"] for r in read_csv(tmp_path / "accuracy_per_epoch.csv")}
    assert labels == {"scl (short flows)", "bp (single flow)", "scl heads, no detach"}
    assert (tmp_path / "accuracy_vs_epoch.png").is_file()
    assert "test accuracy per epoch" in capsys.readouterr().out


def test_the_no_detach_variant_has_one_long_flow_per_loss() -> None:
    example = load_example("short_vs_long_flows")
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 4
    joint = decouple.convert(
        get_architecture("convnet").build(1, 10, 28, width=4),
        example.JOINT.name,
        ["block1", "block2"],
        example_inputs=(x,),
    )
    losses = joint.local_losses(x, target=y)
    first = list(joint.stages[0].module.parameters())
    grads = torch.autograd.grad(losses[-1], first, allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), "the output loss reaches the first block"
    before = [p.detach().clone() for p in first]
    example.joint_fit(joint, [(x, y)], 1, progress=False)
    assert all(not torch.equal(b, p) for b, p in zip(before, first) if p.requires_grad)


def test_projection_heads_compares_identity_linear_mlp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        load_example("projection_heads").main(
            ["--archs", "convnet", "--seeds", "1", "--baseline", "--out", str(tmp_path), *TINY]
        )
        == 0
    )
    summary = {r["label"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert list(summary) == ["scl, identity head", "scl, linear head", "scl, mlp head", "bp"]
    training = [int(summary[f"scl, {h} head"]["training_params"]) for h in ("identity", "linear", "mlp")]
    assert (
        training[0] == int(summary["bp"]["training_params"]) < training[1] < training[2]
    )  # identity heads have no parameters
    assert len({r["inference_params"] for r in summary.values()}) == 1
    assert "scl, mlp head" in capsys.readouterr().out


def test_example_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        load_example("vision_compare").main(["--methods", "sgd", "--out", str(tmp_path), *TINY])
    with pytest.raises(ConfigError, match="--heads"):
        load_example("projection_heads").main(["--heads", "conv", "--out", str(tmp_path), *TINY])
    with pytest.raises(ConfigError, match="METHOD:KEY=VALUE"):
        load_example("vision_compare").main(["--option", "temperature=0.5", "--out", str(tmp_path), *TINY])
    with pytest.raises(ConfigError, match="--width"):
        load_example("vision_compare").main(
            ["--width", "wide", "--archs", "convnet", "--methods", "bp", "--seeds", "1", "--out", str(tmp_path), *TINY]
        )
    assert sys.modules.get("decouple") is decouple


TEXT_TINY = ["--epochs", "2", "--train-limit", "160", "--test-limit", "64", "--val-size", "32", "--batch-size", "32",
             "--max-len", "8", "--dim", "16", "--heads", "2", "--quiet"]  # fmt: skip


def test_text_classification_reports_like_the_papers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("text_classification")
    threads = torch.get_num_threads()
    assert example.main(["--seeds", "0", "1", "--out", str(tmp_path), *TEXT_TINY]) == 0
    assert torch.get_num_threads() == threads
    printed = capsys.readouterr().out
    for name in ("accuracy_per_epoch.csv", "summary.csv", "tables.md", "runs.json", "accuracy_vs_epoch.png"):
        assert (tmp_path / name).is_file(), name
    rows = read_csv(tmp_path / "accuracy_per_epoch.csv")
    methods = ("bp", "early_exit", "al", "scl")
    expected = {(a, m, s, e) for a in ("lstm", "transformer") for m in methods for s in ("0", "1") for e in ("1", "2")}
    assert {(r["arch"], r["method"], r["seed"], r["epoch"]) for r in rows} == expected
    assert "±" in printed and "best val. epoch" in printed and "constant prediction" in printed
    assert "AL shortcut inference" in printed and "exit=4" in printed  # AL cuts after the third layer too
    assert "LSTM training" in printed  # the parameter table
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    al = [r for r in runs if r["method"] == "al"]
    assert all(len(r["shortcuts"]) == 4 and len(r["val_accuracy"]) == 2 for r in al)
    assert {r["options"].get("pool") for r in runs if r["arch"] == "lstm" and r["method"] != "bp"} == {"final_state"}


def test_text_classification_second_data_set_and_state_passing(capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("text_classification")
    args = ["--dataset", "health_news", "--models", "lstm", "--methods", "scl", "--pass-state", *TEXT_TINY]
    assert example.main(args) == 0
    printed = capsys.readouterr().out
    assert "health_news" in printed and "16 classes" in printed
    with pytest.raises(SystemExit):
        example.main(["--dataset", "imdb", *TEXT_TINY])
