"""Peak training memory: backprop vs decoupled steps vs the pipeline, each in a fresh process.

    PYTHONPATH=. python benchmarks/memory.py                                   # resnet50 and vit_b_16, as filed
    PYTHONPATH=. python benchmarks/memory.py --models resnet50 --steps 2 --modes plain bp scl pipe-d2
    PYTHONPATH=. python benchmarks/memory.py --models resnet18 vit_tiny --batch 8 --size 32   # a quick check
    PYTHONPATH=. python benchmarks/memory.py --device cuda --out results/memory   # on a GPU

Every configuration (model x mode) runs in a fresh Python process that builds the model, converts
it, makes the batch, then measures the peak bytes in use during ``--steps`` training steps above
what was in use just before the first one (``benchmarks/peak.py``: CUDA's ``max_memory_allocated``;
on CPU the peak resident size with glibc returning every large block on free). Parameters, the
model copy and the batch are in that baseline; gradients, optimizer state (Adam's is created by the
first step), activations, heads' activations and whatever the runtime keeps are in the peak.

Modes (all on the same model, batch and thread count):

  plain        a plain PyTorch loop: the model, one Adam, cross-entropy, zero_grad / backward / step
  bp           decouple's ``bp``: the same stages trained end to end (``train_step``)
  scl, early_exit, al
               decouple's sequential ``train_step`` (al cuts after every block: it replaces the head)
  pipe-dN      ``scl`` through ``dm.pipeline(depth=N)``: ``--steps + stages - 1`` batches, so that
               every stage trains at once for ``--steps`` batches after the fill (default
               ``backward_slots="auto"``: at most 2 stages of a CPU in their backward pass at once)
  pipe-dN-sK   the same with ``backward_slots=K``; ``-snone``: no limit
  stageK       ``scl``'s stage K alone (forward, local loss, backward, step) on a precomputed input

Targets (issue 19): decoupled ``train_step`` <= 0.75x bp; ``pipe-d2`` <= 1.05x bp; bp within 3% of plain.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import decouple
from decouple.runtime.step import backward_local, forward_local
from decouple.tree import detach_tree

try:
    from peak import MALLOC_ENV, PeakMemory, malloc_configured  # run as a script: benchmarks/ is on sys.path
except ImportError:
    from benchmarks.peak import MALLOC_ENV, PeakMemory, malloc_configured

HERE = Path(__file__).resolve().parent
VIT_BLOCKS = ["encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_5", "encoder.layers.encoder_layer_8"]


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: its builder, the splits of the decoupled methods and of ``al``, default batch and size."""

    build: Callable[[int], nn.Module]  # image size -> model
    splits: list[str]
    al_splits: list[str]  # associated learning replaces everything after its last split: cut after the last block
    batch: int
    size: int


def _vit_tiny(size: int) -> nn.Module:
    return torchvision.models.VisionTransformer(size, 8, num_layers=4, num_heads=2, hidden_dim=64, mlp_dim=128, num_classes=10)  # fmt: skip


MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec(
        lambda s: torchvision.models.resnet50(num_classes=10),
        ["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3", "layer4"], 48, 160,
    ),
    "vit_b_16": ModelSpec(
        lambda s: torchvision.models.vit_b_16(num_classes=10, image_size=s), VIT_BLOCKS, [*VIT_BLOCKS, "encoder"], 16, 224
    ),
    "resnet18": ModelSpec(
        lambda s: torchvision.models.resnet18(num_classes=10),
        ["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3", "layer4"], 8, 32,
    ),
    "vit_tiny": ModelSpec(
        _vit_tiny, [f"encoder.layers.encoder_layer_{k}" for k in range(3)],
        [f"encoder.layers.encoder_layer_{k}" for k in range(3)] + ["encoder"], 8, 32,
    ),
}  # fmt: skip
MODES = [
    "plain",
    "bp",
    "scl",
    "early_exit",
    "al",
    "pipe-d1",
    "pipe-d2",
    "pipe-d2-s1",
    "pipe-d2-s2",
    "pipe-d2-snone",
    "pipe-d4",
    "stage0",
    "stage1",
    "stage2",
    "stage3",
]


@dataclass(frozen=True)
class Config:
    """One measured configuration (what a fresh process is told to run)."""

    model: str
    mode: str
    batch: int
    size: int
    steps: int
    threads: int
    device: str


# -- one configuration, in its own process -------------------------------------------------
def _batch(c: Config) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(c.batch, 3, c.size, c.size, generator=g)
    y = torch.arange(c.batch) % 10  # every class present twice or more at batch >= 20: SupCon has positives
    return x.to(c.device), y.to(c.device)


def _plain(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _stage_alone(dm: decouple.DecoupledModel, k: int, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    stages = list(dm.stages)
    if k >= len(stages):
        raise SystemExit(f"stage{k}: the model has {len(stages)} stages")
    message, carry = dm.bind((x,), {}), y
    with torch.no_grad():
        for stage in stages[:k]:
            result = stage.run(message, carry)
            message = detach_tree(result.message)
            if result.result is not None:
                carry = detach_tree(result.result.carry)

    config = dm.training_config

    def step() -> None:  # the stage's local step as every runtime takes it (decouple.runtime.step)
        result = forward_local(stages[k], config, message, carry)
        assert result.result is not None
        backward_local(stages[k], config, result.result.loss)

    return step


def _repeat(step: Callable[[], None], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            step()

    return run


def setup(c: Config) -> tuple[Callable[[], None], dict[str, Any]]:
    """What to measure (all ``c.steps`` steps), and facts about the model."""
    torch.manual_seed(0)
    spec = MODELS[c.model]
    model = spec.build(c.size)
    x, y = _batch(c)
    if c.mode == "plain":
        step = _plain(model.to(c.device), x, y)
        return _repeat(step, c.steps), {"stages": 1}
    method = c.mode if c.mode in ("bp", "scl", "early_exit", "al") else "scl"
    splits = spec.al_splits if method == "al" else spec.splits
    dm = decouple.convert(model, method=method, splits=splits, example_inputs=(x[:2].cpu(),), devices=[c.device])
    facts = {"stages": dm.num_stages}
    if c.mode.startswith("pipe-d"):
        depth_part, _, slots_part = c.mode[len("pipe-d") :].partition("-s")
        depth, batches = int(depth_part), c.steps + dm.num_stages - 1
        slots: int | str | None = "auto" if not slots_part else None if slots_part == "none" else int(slots_part)
        facts["batches"] = batches

        def piped() -> None:
            with dm.pipeline(depth=depth, backward_slots=slots) as pipe:
                for _ in range(batches):
                    pipe.submit(x, target=y)
                facts["pipeline_peak_memory"] = pipe.drain().peak_memory

        return piped, facts
    if c.mode.startswith("stage"):
        step = _stage_alone(dm, int(c.mode[len("stage") :]), x, y)
    else:
        step = lambda: dm.train_step(x, target=y) and None
    return _repeat(step, c.steps), facts


def child(c: Config) -> dict[str, Any]:
    torch.set_num_threads(c.threads)
    run, facts = setup(c)
    tic = time.perf_counter()
    with PeakMemory(c.device) as peak:
        run()
    return {**asdict(c), **facts, "peak": peak.bytes, "baseline": peak.start, "seconds": time.perf_counter() - tic,
            "malloc_fixed": malloc_configured(), "torch": torch.__version__}  # fmt: skip


# -- the run: one fresh process per configuration ------------------------------------------
def measure(c: Config, timeout: float, malloc: str = "fixed") -> dict[str, Any]:
    """Run ``c`` in a fresh process (on CUDA in this one: the allocator's peak is exact); its result, or why it failed."""
    if c.device.startswith("cuda"):
        try:
            return child(c)
        except Exception as exc:  # one failed configuration (out of memory, ...) keeps the others
            return {**asdict(c), "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
        finally:
            gc.collect()
            torch.cuda.empty_cache()
    fixed = MALLOC_ENV if malloc == "fixed" else {}
    path = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, **fixed, "PYTHONPATH": path}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(c))]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**asdict(c), "error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {**asdict(c), "error": why[:300]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """One markdown table: peak MiB and ratios to bp and to the plain loop, per model."""
    out = [
        "| model | mode | stages | peak MiB | x bp | x plain | steps s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ref = {q["mode"]: q.get("peak") for q in rows if q["model"] == r["model"]}
        if "error" in r:
            out.append(f"| {r['model']} | {r['mode']} | | failed: {r['error']} | | | |")
            continue
        ratio = lambda base: f"{r['peak'] / base:.2f}" if base else ""  # noqa: B023
        out.append(f"| {r['model']} | {r['mode']} | {r.get('stages', '')} | {mib(r['peak'])} | {ratio(ref.get('bp'))} | "
                   f"{ratio(ref.get('plain'))} | {r['seconds']:.1f} |")  # fmt: skip
    return out


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, met or missed, per model."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        peak = {r["mode"]: r["peak"] for r in rows if r["model"] == model and "peak" in r}
        checks = [(m, peak[m] / peak["bp"], 0.75) for m in ("scl", "early_exit", "al") if m in peak and "bp" in peak]
        for pipe in ("pipe-d2", "pipe-d2-snone", "pipe-d2-s2", "pipe-d2-s1"):
            if pipe in peak and "bp" in peak:
                checks.append((pipe, peak[pipe] / peak["bp"], 1.05))
        for mode, ratio, limit in checks:
            lines.append(
                f"{model}: {mode} {ratio:.2f}x bp (target <= {limit}): {'met' if ratio <= limit else 'MISSED'}"
            )
        if "bp" in peak and "plain" in peak:
            ratio = peak["bp"] / peak["plain"]
            lines.append(
                f"{model}: bp {ratio:.3f}x plain (target within 3%): {'met' if abs(ratio - 1) <= 0.03 else 'MISSED'}"
            )
    return lines


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"], choices=sorted(MODELS))
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--batch", type=int, help="batch size (default: the model's, 48 for resnet50, 16 for vit_b_16)")
    parser.add_argument("--size", type=int, help="image side (default: 160 for resnet50, 224 for vit_b_16)")
    parser.add_argument("--steps", type=int, default=3, help="training steps measured per configuration")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (every stage on the one GPU)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument(
        "--malloc",
        choices=["fixed", "default"],
        default="fixed",
        help="fixed (default): glibc returns every block >= 128 KiB on free, so resident size follows the live "
        "tensors; default: glibc as a user's process runs it (freed blocks may stay resident in per-thread arenas)",
    )
    parser.add_argument("--out", type=Path, help="write memory.json and memory.md here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(Config(**json.loads(args.child)))))
        return []
    rows = []
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, {args.steps} steps; load {os.getloadavg()}",
          flush=True)  # fmt: skip
    for name in args.models:
        spec = MODELS[name]
        for mode in args.modes:
            c = Config(
                name, mode, args.batch or spec.batch, args.size or spec.size, args.steps, args.threads, args.device
            )
            rows.append(measure(c, args.timeout, args.malloc))
            print(table(rows[-1:])[-1], flush=True)
    lines = [f"load average after the run: {os.getloadavg()}", *table(rows), "", *targets(rows)]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory.json").write_text(json.dumps(rows, indent=1))
        (args.out / "memory.md").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
