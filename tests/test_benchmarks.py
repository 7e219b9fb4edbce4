"""The memory and GPU benchmarks: the peak measure itself, their tables and verdicts, and the GPU check's CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_speed, memory
from benchmarks.peak import PeakMemory, rss_peak_resettable

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


@pytest.mark.skipif(not rss_peak_resettable(), reason="the CPU peak needs Linux's /proc/self/clear_refs")
def test_the_cpu_peak_sees_a_block_freed_before_the_end_and_not_what_came_before() -> None:
    before = torch.ones(48 * MIB // 4)  # in use before the block: part of the baseline, not of the peak
    with PeakMemory("cpu") as peak:
        spike = torch.ones(96 * MIB // 4)  # written, so resident
        del spike
    assert 90 * MIB <= peak.bytes < 140 * MIB
    assert peak.start >= before.numel() * 4


def _row(model: str, mode: str, mib: float) -> dict[str, object]:
    return {"model": model, "mode": mode, "stages": 4, "peak": int(mib * MIB), "seconds": 1.0}


def test_memory_tables_give_ratios_to_bp_and_plain_and_judge_the_targets() -> None:
    rows = [_row("m", "plain", 1000), _row("m", "bp", 1020), _row("m", "scl", 700), _row("m", "pipe-d2", 1100),
            {"model": "m", "mode": "al", "error": "timed out after 9 s"}]  # fmt: skip
    table = memory.table(rows)
    assert "| m | scl | 4 | 700 | 0.69 | 0.70 | 1.0 |" in table
    assert "| m | al | | failed: timed out after 9 s | | | |" in table
    verdicts = memory.targets(rows)
    assert "m: scl 0.69x bp (target <= 0.75): met" in verdicts
    assert "m: pipe-d2 1.08x bp (target <= 1.05): MISSED" in verdicts
    assert "m: bp 1.020x plain (target within 3%): met" in verdicts


def test_speed_tables_compare_each_mode_with_bp_and_name_what_did_not_run() -> None:
    rows = [
        {"model": "vgg", "mode": "bp", "batch": 128, "precision": "fp32", "samples_per_s": 1000.0},
        {"model": "vgg", "mode": "scl-pipe", "batch": 128, "precision": "fp32", "samples_per_s": 900.0},
        {"model": "vgg", "mode": "gpipe", "batch": 128, "precision": "fp32", "samples_per_s": 600.0},
        {"model": "vgg", "mode": "scl-pipe", "batch": 128, "precision": "bf16", "error": "not run: why"},
        {"model": "vgg", "mode": "bp", "batch": 128, "precision": "bf16", "samples_per_s": 2000.0},
    ]
    lines = gpu_speed.table(rows)
    assert "| vgg | fp32 | 128 | 1,000 | 0.90 | 0.60 |" in lines
    assert "| vgg | bf16 | 128 | 2,000 | n/a |  |" in lines
    assert "n/a: scl-pipe (bf16): not run: why" in lines
    assert gpu_speed.targets(rows) == ["vgg fp32 batch 128: scl-pipe 0.90x bp (MISSED), 1.50x gpipe (met)"]


@pytest.mark.timeout(300)
def test_every_speed_mode_runs_on_cpu_at_tiny_sizes(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    rows = gpu_speed.main(["--device", "cpu", "--models", "transformer", "--batches", "4", "--steps", "1", "--rounds",
                           "1", "--warmup", "1", "--cores", "1", "--no-compile", "--out", str(tmp_path)])  # fmt: skip
    assert torch.get_num_threads() == threads, "the benchmark restores torch's thread count"
    ran = {(r["mode"], r["precision"]): r for r in rows}
    assert set(ran) == {(m, p) for m in gpu_speed.MODES for p in ("fp32", "bf16")}
    failed = {k: r["error"] for k, r in ran.items() if "error" in r}
    assert not failed, failed  # the pipeline in bf16 too: convert(precision="bf16") reaches its stage threads
    assert all(r["samples_per_s"] > 0 for r in ran.values())
    assert json.loads((tmp_path / "speed.json").read_text()) == rows
    assert "| transformer | fp32 | 4 |" in (tmp_path / "speed.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_gpu_check_dry_runs_every_step_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--install", "dry-run", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=880)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = {s["step"]: s for s in json.loads((tmp_path / "steps.json").read_text())}
    assert set(steps) == {"install", "tests", "speed", "memory"}
    assert all(s["rc"] == 0 and not s["timed_out"] for s in steps.values())
    assert "skipped" in (tmp_path / "tests.log").read_text()  # the CUDA tests skip cleanly here
    summary = (tmp_path / "summary.md").read_text()
    assert "## speed/speed.md" in summary and "## memory/memory.md" in summary and "| resnet18 | bp |" in summary
    assert done.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])  # the table is printed last


@pytest.mark.parametrize(
    "mode",
    [m if m in ("plain", "bp", "al", "pipe-d2", "stage0", "stage3") else pytest.param(m, marks=pytest.mark.slow)
     for m in memory.MODES],
)  # fmt: skip
def test_every_memory_mode_trains_a_tiny_model(mode: str) -> None:
    """What each fresh process would measure runs here, in process (the measure itself is tested above)."""
    run, facts = memory.setup(memory.Config("resnet18", mode, batch=4, size=32, steps=1, threads=1, device="cpu"))
    run()
    assert facts["stages"] >= 1
