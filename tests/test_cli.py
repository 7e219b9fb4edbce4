"""The ``decouple`` command line: numbers match the API, JSON parses, bad input exits 2, exports run without decouple."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

import decouple
from benchmarks import zoo
from decouple import cli

from .helpers import registered_methods, small_options

ROOT = Path(__file__).resolve().parents[1]
RESNET = ["torchvision:resnet18", "--input-shape", "2,3,32,32", "--num-classes", "10"]
TINY = ["tests.cli_models:tiny_net", "--input-shape", "2,3,8,8", "--num-classes", "4"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m decouple ARGS`` in a fresh process that imports this worktree's decouple."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "decouple", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def resnet18_dm() -> Any:
    model = torchvision.models.resnet18(num_classes=10)
    return decouple.convert(model, splits=["layer1", "layer2", "layer3"], example_inputs=(torch.randn(2, 3, 32, 32),))


def tiny_dm(splits: list[str], **options: Any) -> Any:
    from .cli_models import tiny_net

    return decouple.convert(
        tiny_net(num_classes=4), splits=splits, example_inputs=(torch.randn(2, 3, 8, 8),), **options
    )


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _number(text: str) -> int:
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", text), f"{text!r} is not a number with thousands separators"
    return int(text.replace(",", ""))


def test_inspect_table_prints_param_counts() -> None:
    result = run_cli("inspect", *RESNET, "--splits", "layer1,layer2,layer3")
    assert result.returncode == 0, result.stderr
    counts = resnet18_dm().param_counts()
    lines = result.stdout.splitlines()
    for s in counts.stages:
        row = next(_cells(line) for line in lines if _cells(line)[0] == str(s.index))
        assert [_number(c) for c in row[-4:-1]] == [s.effective, s.affiliated, s.training]
        assert ", ".join(s.modules) in row
    total = next(_cells(line) for line in lines if _cells(line)[0] == "total")
    assert [_number(c) for c in total[-3:]] == [counts.effective, counts.affiliated, counts.training]
    for label, value in (
        ("training", counts.training),
        ("inference", counts.inference),
        ("original model", counts.original),
    ):
        row = next(_cells(line) for line in lines if _cells(line)[0] == label)
        assert _number(row[1]) == value
    assert "layer1_1_relu_1 (2, 64, 8, 8)" in result.stdout  # boundary values with shapes
    assert "output (2, 10)" in result.stdout


def test_inspect_json_matches_the_api() -> None:
    result = run_cli("inspect", *TINY, "--splits", "stem,blocks.0", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["splits"] == ["stem", "blocks.0"] and data["model_spec"] == "tests.cli_models:tiny_net"
    dm = tiny_dm(["stem", "blocks.0"])
    counts = dm.param_counts().as_dict()
    for key in ("method", "original", "inference", "training", "effective", "affiliated", "dropped"):
        assert data[key] == counts[key], key
    assert len(data["stages"]) == dm.num_stages == 3
    for row, expected, stage in zip(data["stages"], counts["stages"], dm.stages):
        for key in ("index", "modules", "effective", "affiliated", "training"):
            assert row[key] == expected[key], key
        io = stage.io[True]
        assert [b["name"] for b in row["inputs"]] == io.inputs
        for b in row["inputs"]:
            assert (tuple(b["shape"]), b["dtype"]) == io.shapes[b["name"]]
    assert data["stages"][-1]["outputs"] == [
        {"name": "output", "shape": [2, 4], "dtype": "float32", "value": None, "carried": False}
    ]
    assert abs(sum(r["flops_share"] for r in data["stages"]) - 1.0) < 1e-9


def test_splits_on_resnet18_lists_block_boundaries_only() -> None:
    result = run_cli("splits", *RESNET, "--stages", "4", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    single = [c for c in data["candidates"] if not c["crossing"]]
    several = [c for c in data["candidates"] if c["crossing"]]
    assert data["candidates"] == single + several  # points where several tensors cross come last, marked
    names = [c["name"] for c in single]
    assert {"layer1", "layer2", "layer3", "layer4"} <= set(names)
    assert names.index("layer1") < names.index("layer2") < names.index("layer3") < names.index("layer4")
    inside_a_block = [n for n in names + [a for c in single for a in c["aliases"]] if re.match(r"layer\d\.\d\.", n)]
    assert not inside_a_block
    assert several and all(re.match(r"layer\d\.\d\.", c["name"]) for c in several)  # the residual crosses beside
    assert set(data["suggested"]) <= set(names)  # four stages need no multi-tensor point
    for key in ("params_share", "flops_share"):
        for kind in (single, several):  # each kind in forward order
            shares = [c[key] for c in kind]
            assert shares == sorted(shares) and shares[0] >= 0 and shares[-1] <= 1
    assert data["suggested"] == ["layer1", "layer2", "layer3"]
    assert abs(sum(data["stage_shares"]) - 1.0) < 1e-9


def test_splits_table_suggests_a_balanced_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["splits", *TINY, "--stages", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"suggested for 2 stages .*: --splits stem\.0\n", out
    )  # the head at the cut dominates this tiny net
    rows = [_cells(line) for line in out.splitlines() if re.match(r"\s*\d+\s{2,}", line)]
    assert [r[1].split(" ")[0] for r in rows][:2] == ["stem.0", "stem"]
    assert all(re.fullmatch(r"\d+\.\d%", r[-1]) for r in rows)


#: the torchvision classifiers the test suite covers (the zoo's families, and the two the layout issue reported)
AGREEMENT = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1", "googlenet", "vit_b_16", "densenet121"]
AGREEMENT_SLOW = ["efficientnet_b0", "swin_t", "inception_v3"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", [*AGREEMENT, *(pytest.param(n, marks=pytest.mark.slow) for n in AGREEMENT_SLOW)])
def test_splits_suggests_exactly_what_convert_picks(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    case = zoo.model_case(name)
    stages = 4
    argv = ["splits", f"torchvision:{name}", "--input-shape", f"2,3,{case.size},{case.size}", "--stages", str(stages)]
    assert cli.main([*argv, "--kwargs", json.dumps(case.kwargs), "--json"]) == 0
    suggested = json.loads(capsys.readouterr().out)["suggested"]
    torch.manual_seed(0)
    x = torch.randn(2, 3, case.size, case.size)
    dm = decouple.convert(case.build(), splits=stages, example_inputs=(x,))
    assert suggested == [point.spec for point in dm.program.partitions[True].splits]


_RUN_WITHOUT_DECOUPLE = """
import sys
for name in ("decouple", "torchvision", "tests", "cli_models"):
    sys.modules[name] = None  # importing any of them now raises ImportError
sys.path.insert(0, sys.argv[1])
import torch, inference
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(inference.load()(x), sys.argv[3])
"""


def _run_exported(folder: Path, x: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "run_exported.py"
    script.write_text(textwrap.dedent(_RUN_WITHOUT_DECOUPLE))
    env = {"PATH": os.environ.get("PATH", "")}  # no PYTHONPATH: only the exported folder is added
    done = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "y.pt", weights_only=True)


def test_exported_resnet18_runs_without_decouple(tmp_path: Path) -> None:
    out = tmp_path / "resnet18"
    result = run_cli("export", *RESNET, "--splits", "layer1,layer2,layer3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected_files = (
        {"inference.py", "manifest.json"}
        | {f"stage{k}.py" for k in range(4)}
        | {f"stage{k}_heads.py" for k in range(3)}
    )
    assert expected_files <= {p.name for p in out.iterdir()}
    torch.manual_seed(0)  # the command line seeds with --seed 0 before building the model
    original = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_run_exported(out, x, tmp_path), original(x), rtol=1e-5, atol=1e-5)


def test_exported_custom_model_carries_its_code(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    result = run_cli(
        "export", *TINY, "--splits", "stem,blocks.0", "--leaf-module", "blocks.1", "--out", str(out), "--json"
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(result.stdout)["max_abs_diff"] == 0.0
    assert manifest["method"] == "scl" and manifest["stages"] == 3
    code = (out / "inference.py").read_text()
    assert "class Block(nn.Module)" in code and "def scale_shift(" in code  # the user's leaf class and wrapped function
    from .cli_models import tiny_net

    torch.manual_seed(0)
    original = tiny_net(num_classes=4).eval()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(_run_exported(out, x, tmp_path), original(x))


def test_a_bad_model_spec_exits_2_with_one_line() -> None:
    result = run_cli("inspect", "torchvision:resnet81", "--splits", "layer1", "--input-shape", "2,3,32,32")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "resnet18" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["inspect", "torchvision:resnet81", "--splits", "layer1", "--input-shape", "2,3,32,32"],
            "did you mean 'resnet18'",
        ),
        (["inspect", "resnet18", "--splits", "layer1", "--input-shape", "2,3,32,32"], "torchvision:NAME"),
        (
            ["inspect", "no_such_module_x:build", "--splits", "a", "--input-shape", "2,3"],
            "cannot import module 'no_such_module_x'",
        ),
        (["inspect", "tests.cli_models:tiny_nett", "--splits", "a", "--input-shape", "2,3"], "did you mean 'tiny_net'"),
        (["inspect", "tests.cli_models:not_a_model", "--splits", "a", "--input-shape", "2,3"], "not an nn.Module"),
        (
            [
                "inspect",
                "tests.cli_models:tiny_net",
                "--kwargs",
                '{"width": 3}',
                "--splits",
                "a",
                "--input-shape",
                "2,3",
            ],
            "fix --kwargs",
        ),
        (
            ["inspect", "tests.cli_models:tiny_net", "--kwargs", "{bad", "--splits", "a", "--input-shape", "2,3"],
            "--kwargs is not valid JSON",
        ),
        (
            [*["inspect", "tests.cli_models:tiny_net", "--splits", "stem,blockz.0", "--input-shape", "2,3,8,8"]],
            "did you mean 'blocks.0'",
        ),
        (
            [*["inspect", "tests.cli_models:tiny_net", "--splits", "stem", "--input-shape", "2,x,8"]],
            "--input-shape must be comma-separated",
        ),
        ([*["inspect", "tests.cli_models:tiny_net", "--splits", "stem", "--input-shape", "2,5,8,8"]], "--input-shape"),
        ([*["inspect", "tests.cli_models:tiny_net", "--input-shape", "2,3,8,8"]], "give --splits"),
        (
            [
                *[
                    "inspect",
                    "tests.cli_models:tiny_net",
                    "--splits",
                    "stem",
                    "--input-shape",
                    "2,3,8,8",
                    "--method",
                    "scll",
                ]
            ],
            "did you mean 'scl'",
        ),
        (
            [
                *[
                    "inspect",
                    "tests.cli_models:tiny_net",
                    "--splits",
                    "stem",
                    "--input-shape",
                    "2,3,8,8",
                    "--option",
                    "temperatur=1",
                ]
            ],
            "did you mean 'temperature'",
        ),
        (
            [
                *[
                    "inspect",
                    "tests.cli_models:tiny_net",
                    "--splits",
                    "stem",
                    "--input-shape",
                    "2,3,8,8",
                    "--option",
                    "temperature",
                ]
            ],
            "KEY=VALUE",
        ),
        (
            [*["splits", "tests.cli_models:tiny_net", "--input-shape", "2,3,8,8", "--stages", "30"]],
            "ask for fewer stages",
        ),
    ],
)
def test_bad_input_exits_2_with_a_helpful_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == cli.USAGE_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decouple {argv[0]}: error: ") and "\n" not in err
    assert needle in err


def test_argparse_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(
            ["inspect", "torchvision:resnet18", "--splits", "layer1", "--stages", "2", "--input-shape", "2,3,32,32"]
        )
    assert info.value.code == 2
    assert "not allowed with argument --splits" in capsys.readouterr().err


def test_subcommands_come_from_a_registry(capsys: pytest.CaptureFixture[str]) -> None:
    def add(parser: Any) -> None:
        parser.add_argument("--times", type=int, default=1)

    def run(args: Any) -> int:
        print("hello " * args.times)
        return 0

    cli.register_command(cli.Command("hello", "say hello", add, run))
    try:
        assert cli.main(["hello", "--times", "2"]) == 0
        assert capsys.readouterr().out.strip() == "hello hello"
    finally:
        del cli.COMMANDS["hello"]
    assert {"inspect", "splits", "export"} <= set(cli.COMMANDS)


def test_token_inputs_and_method_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["inspect", "tests.cli_models:token_net", "--input-shape", "2,7", "--input-dtype", "long", "--input-high", "50",
            "--splits", "mix", "--option", "head=linear", "--option", "head_dims=[6]", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stages"][0]["inputs"][0] == {
        "name": "ids",
        "shape": [2, 7],
        "dtype": "int64",
        "value": None,
        "carried": False,
    }
    assert data["stages"][0]["affiliated"] == 16 * 6 + 6  # mean over tokens -> Linear(16, 6)


@pytest.mark.parametrize("method", [m for m in registered_methods() if m != "scl"])
def test_inspect_and_export_work_for_every_method(
    method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = [f"--option={k}={json.dumps(v)}" for k, v in small_options(method).items()]
    base = [
        "tests.cli_models:tiny_net",
        "--input-shape",
        "4,3,8,8",
        "--num-classes",
        "4",
        "--method",
        method,
        "--splits",
        "stem,blocks.0",
        *options,
    ]
    assert cli.main(["inspect", *base, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["training"] == sum(s["training"] for s in data["stages"])
    assert data["original"] == 2060
    assert cli.main(["export", *base, "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] < 1e-4


def test_export_writes_trained_weights_from_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dm = tiny_dm(["stem", "blocks.0"], head="linear", head_dims=(8,))
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    for _ in range(3):
        dm.train_step(x, target=y)
    torch.save(dm.state_dict(), tmp_path / "ckpt.pt")
    out = tmp_path / "out"
    head = ["--option", "head=linear", "--option", "head_dims=[8]"]
    assert (
        cli.main(
            [
                "export",
                *TINY,
                *head,
                "--splits",
                "stem,blocks.0",
                "--checkpoint",
                str(tmp_path / "ckpt.pt"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "max abs diff 0" in capsys.readouterr().out
    exported = torch.load(out / "inference.pt", weights_only=True)
    for key, value in dm.effective_state_dict().items():
        torch.testing.assert_close(exported[key], value)
    assert (
        cli.main(
            ["export", *TINY, *head, "--splits", "stem", "--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(out)]
        )
        == 2
    )
    assert "different conversion" in capsys.readouterr().err
