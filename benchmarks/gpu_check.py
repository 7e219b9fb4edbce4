"""The GPU check (issue 19), for a bare machine whose python has torch, torchvision and transformers.

    benchmarks/gpu_check.sh --out gpu_results                 # on the GPU machine: about 8 minutes
    benchmarks/gpu_check.sh --device cpu --install dry-run --out /tmp/gpu_dry   # the dry run on a CPU

Steps, each in its own process group with its own timeout (one hang cannot eat the run), each
writing ``<out>/<step>.log``; ``<out>/steps.json`` records every step's exit status and time, and
a short table of everything measured is printed last (and written to ``<out>/summary.md``):

  env       python, torch, CUDA and the device, the date (``env.json``)
  install   ``pip install --no-deps --no-build-isolation -e .`` (``--install system``, the default);
            ``dry-run`` builds the package but installs nothing (for a shared interpreter);
            ``none`` skips it. Every later step also has this checkout on ``PYTHONPATH``.
  tests     the tests marked ``cuda`` (``pytest -m cuda``; without CUDA they all skip)
  speed     ``benchmarks/gpu_speed.py``: bp vs scl vs the scl pipeline vs GPipe, fp32 and bf16
  memory    ``benchmarks/memory.py``: peak training memory of bp, scl, early_exit, al, the pipeline

``--device cpu`` runs every step at tiny sizes (the dry run; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def run_step(name: str, cmd: list[str], out: Path, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` in its own process group; kill the whole group at ``timeout``."""
    print(f"== {name}: {' '.join(cmd)} (timeout {timeout:.0f} s)", flush=True)
    tic = time.monotonic()
    with (out / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    result = {"step": name, "rc": rc, "seconds": round(time.monotonic() - tic, 1), "timed_out": rc is None}
    tail = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
    print(f"   {'TIMED OUT' if rc is None else f'exit {rc}'} after {result['seconds']} s; " + " / ".join(tail)[-400:], flush=True)  # fmt: skip
    return result


def environment(python: str, env: dict[str, str]) -> dict[str, Any]:
    probe = (
        "import json, torch, decouple; d = torch.cuda.is_available(); "
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuda_available': d, "
        "'device': torch.cuda.get_device_name(0) if d else None, 'decouple': decouple.__file__}))"
    )
    done = subprocess.run([python, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    info: dict[str, Any] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-500:]}
    info.update(python=python, platform=platform.platform(), date=datetime.datetime.now().isoformat(timespec="seconds"))
    return info


def summary(out: Path, steps: list[dict[str, Any]], info: dict[str, Any], dry: bool) -> list[str]:
    """The short table printed last: the environment, every step's status, the measured tables."""
    lines = [f"# GPU check, {info.get('date')}: torch {info.get('torch')} (CUDA {info.get('cuda')}), "
             f"device {info.get('device') or 'cpu only'}", "", "| step | status | seconds |", "| --- | --- | ---: |"]  # fmt: skip
    if dry:
        lines.insert(
            1, "DRY RUN on the CPU at tiny sizes: it checks that every step runs; its numbers measure nothing."
        )
    for s in steps:
        status = "timed out" if s["timed_out"] else ("ok" if s["rc"] == 0 else f"exit {s['rc']}")
        lines.append(f"| {s['step']} | {status} | {s['seconds']} |")
    tests = out / "tests.log"
    if tests.exists():
        last = [ln for ln in tests.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        lines += ["", f"tests: {last[0] if last else 'no output'}"]
    for name in ("speed/speed.md", "memory/memory.md"):
        path = out / name
        lines += ["", f"## {name}", *(path.read_text().splitlines() if path.exists() else ["(not written)"])]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check_results"))
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for the dry run at tiny sizes")
    parser.add_argument("--install", choices=["system", "dry-run", "none"], default="system")
    parser.add_argument("--python", default=sys.executable, help="the interpreter with torch (default: this one)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tests", "speed", "memory"])
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH")] if p)}
    py, cpu = args.python, args.device == "cpu"
    steps = []
    if args.install != "none":
        pip = [py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]
        steps.append(run_step("install", pip + (["--dry-run"] if args.install == "dry-run" else []), out, 300, env))
    info = environment(py, env)
    (out / "env.json").write_text(json.dumps(info, indent=1))
    print(f"== env: {json.dumps(info)}", flush=True)
    if "tests" not in args.skip:
        pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs", "--continue-on-collection-errors", "tests"]  # fmt: skip
        steps.append(run_step("tests", pytest, out, 300, env))
    if "speed" not in args.skip:
        speed = [py, str(BENCH / "gpu_speed.py"), "--device", args.device, "--out", str(out / "speed")]
        if cpu:
            speed += ["--models", "vgg", "transformer", "--batches", "4", "--steps", "1", "--rounds", "1", "--warmup", "1", "--cores", "1"]  # fmt: skip
        steps.append(run_step("speed", speed, out, 300, env))
    if "memory" not in args.skip:
        memory = [py, str(BENCH / "memory.py"), "--device", args.device, "--out", str(out / "memory")]
        if cpu:
            memory += ["--models", "resnet18", "vit_tiny", "--batch", "4", "--size", "32", "--steps", "1", "--threads", "1",
                       "--modes", "plain", "bp", "scl", "pipe-d2", "stage0", "--timeout", "120"]  # fmt: skip
        else:
            memory += ["--modes", "plain", "bp", "scl", "early_exit", "al", "pipe-d1", "pipe-d2", "stage0", "stage1", "stage2", "stage3"]  # fmt: skip
        steps.append(run_step("memory", memory, out, 240, env))
    (out / "steps.json").write_text(json.dumps(steps, indent=1))
    lines = summary(out, steps, info, cpu)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return 0 if all(s["rc"] == 0 for s in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
