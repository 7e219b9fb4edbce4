"""``decouple demo``: runs in-process on a tiny configuration and prints both accuracies and the parameter table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from decouple import cli
from decouple.experiments import Compute, RunResult
from decouple.experiments.demo import DemoConfig, compare_times, run_demo

from .helpers import registered_methods

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--epochs",
    "1",
    "--train-limit",
    "256",
    "--test-limit",
    "100",
    "--batch-size",
    "64",
    "--no-progress",
    "--cores",
    "2",
]


def test_demo_prints_progress_accuracies_and_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    assert cli.main(["demo", *TINY]) == 0
    assert torch.get_num_threads() == threads, "the demo restores torch's thread count"
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("decouple demo: DemoCNN (") and "256 train / 100 test images" in lines[0]
    assert "2 stages (splits block1)" in lines[1] and "1 epoch," in lines[1]
    assert any(line.startswith("[1/2] scl (pipelined") for line in lines)
    assert any(
        line.startswith("[2/2] bp (end to end") and "same initial weights, same batches" in line for line in lines
    )
    assert len(re.findall(r"^  epoch 1: test accuracy \d+\.\d\d%$", out, flags=re.M)) == 2
    assert "test accuracy on 100 MNIST test images after 1 epoch:" in out
    found = re.finditer(r"^  (scl|bp)\s+(\d+\.\d\d)%\s+\d+\.\d s   (.+)$", out, flags=re.M)
    rows = {m.group(1): (float(m.group(2)), m.group(3)) for m in found}
    assert set(rows) == {"scl", "bp"} and all(0.0 <= v <= 100.0 for v, _ in rows.values())
    # the same two cores for each, and the table says how each used them
    assert "compute (2 CPU cores each)" in out and "2 CPU cores per method" in lines[1]
    assert rows["scl"][1] == "2 stage threads x 1 intra-op thread" and rows["bp"][1] == "2 intra-op threads"
    assert re.search(
        r"^  time: scl on a 2-stage pipeline (trained \d+\.\d\dx as fast as|was slower than) bp with the same 2 CPU cores",
        out,
        flags=re.M,
    )
    rows = {k: v for k, (v, _) in rows.items()}
    diff = re.search(r"^  scl - bp: ([+-]\d+\.\d\d) points$", out, flags=re.M)
    assert diff is not None and float(diff.group(1)) == pytest.approx(rows["scl"] - rows["bp"], abs=0.011)
    assert "parameters of the scl model (training vs inference):" in out
    totals = re.search(r"method scl: training ([\d,]+) \| inference ([\d,]+) \| original model ([\d,]+)", out)
    assert totals is not None
    training, inference, original = (int(g.replace(",", "")) for g in totals.groups())
    assert inference == original < training  # the heads train, they are not kept


def test_demo_results_match_the_printed_model(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_demo(DemoConfig(epochs=1, train_limit=128, test_limit=50, batch_size=64, progress=False, stages=3))
    out = capsys.readouterr().out
    assert [r.method for r in results] == ["scl", "bp"]
    scl = results[0].params
    assert scl is not None and len(scl.stages) == 3
    assert "3 stages (splits block1, block2)" in out
    assert f"{100 * results[0].final:.2f}%" in out and f"{100 * results[1].final:.2f}%" in out


def test_demo_is_deterministic_and_bp_alone_runs_once(capsys: pytest.CaptureFixture[str]) -> None:
    config = DemoConfig(
        method="bp", epochs=1, train_limit=128, test_limit=50, batch_size=32, progress=False, augment=True
    )
    first, second = run_demo(config), run_demo(config)
    assert len(first) == 1 and first[0].method == "bp"
    assert first[0].test_accuracy == second[0].test_accuracy
    assert first[0].losses == second[0].losses
    assert "[1/1] bp" in capsys.readouterr().out


@pytest.mark.parametrize("method", [m for m in registered_methods() if m not in ("scl", "bp")])
def test_demo_runs_other_methods(method: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--method", method, *TINY]) == 0
    out = capsys.readouterr().out
    assert f"parameters of the {method} model" in out and f"{method} - bp:" in out


def test_bad_demo_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--stages", "5", *TINY]) == 2
    err = capsys.readouterr().err
    assert "--stages must be 2 to 3, got 5" in err and "vision_compare.py" in err
    assert cli.main(["demo", "--method", "sgd", *TINY]) == 2
    assert "unknown method 'sgd'" in capsys.readouterr().err
    assert cli.main(["demo", "--epochs", "0", *TINY[2:]]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_python_m_decouple_demo_help() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "decouple", "demo", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--method", "--epochs", "--stages", "--seed", "--batch-size"):
        assert flag in result.stdout
    assert "--train-limit" not in result.stdout  # a testing flag, hidden
    listing = subprocess.run(
        [sys.executable, "-m", "decouple", "--help"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert "demo" in listing.stdout


def test_demo_trains_in_bf16_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--precision", "bf16", *TINY]) == 0
    out = capsys.readouterr().out
    assert "precision bf16" in out.splitlines()[1]
    assert len(re.findall(r"^  epoch 1: test accuracy \d+\.\d\d%$", out, flags=re.M)) == 2
    assert cli.main(["demo", "--precision", "fp16", *TINY]) == 2  # no CUDA here: the error names the fix
    assert "use precision='bf16' on CPU" in capsys.readouterr().err or torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_bf16_demo_reaches_fp32_test_accuracy_within_half_a_point() -> None:
    """The demo at its default settings (4 epochs, all 12,000 images), scl and bp, in fp32 and in bf16."""
    fp32 = run_demo(DemoConfig(progress=False))
    bf16 = run_demo(DemoConfig(progress=False, precision="bf16"))
    for full, half in zip(fp32, bf16):
        assert full.method == half.method
        assert abs(full.final - half.final) <= 0.005, (full.method, full.final, half.final)


def test_compute_shares_the_same_cores_and_says_how() -> None:
    assert str(Compute.plan(2, 2, pipelined=True)) == "2 stage threads x 1 intra-op thread"
    assert str(Compute.plan(2, 2, pipelined=False)) == "2 intra-op threads"
    assert str(Compute.plan(8, 2, pipelined=True)) == "2 stage threads x 4 intra-op threads"
    assert str(Compute.plan(2, 3, pipelined=True)) == "3 stage threads x 1 intra-op thread on 2 cores"
    assert str(Compute.plan(1, 1, pipelined=False, devices=("cuda:0",))) == "1 intra-op thread, stages on cuda:0"


def test_the_time_line_says_plainly_when_the_pipeline_loses() -> None:
    def run(method: str, seconds: float) -> RunResult:
        return RunResult("demo", method, 0, seconds=seconds)

    slower = compare_times(run("scl", 30.0), run("bp", 20.0), 2, "2 CPU cores")
    assert slower.startswith(
        "time: scl on a 2-stage pipeline was slower than bp with the same 2 CPU cores (0.67x its speed)"
    )
    faster = compare_times(run("scl", 20.0), run("bp", 30.0), 2, "2 CPU cores")
    assert faster == "time: scl on a 2-stage pipeline trained 1.50x as fast as bp with the same 2 CPU cores"


def test_bad_core_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", *TINY, "--cores", "0"]) == 2
    assert "--cores must be at least 1, got 0" in capsys.readouterr().err
