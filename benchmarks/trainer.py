"""The trainer's costs and gains, each as a ratio measured side by side in one run.

    python benchmarks/trainer.py precision [--models resnet18 vit] [--methods scl bp] [--batch 32] [--repeats 5]
    python benchmarks/trainer.py compile   [--models resnet18 vit] [--methods scl bp] [--batch 32] [--repeats 5]
    python benchmarks/trainer.py fit       [--epochs 3] [--train-limit N]

``precision``: one ``train_step`` in bf16 (fp16 too on CUDA) vs fp32, same model copy, batch and
threads, interleaved (fp32, bf16, fp32, ...) so noise hits both alike; ratio of medians.
``compile``: ``convert(compile=True)`` vs eager the same way, after warm-up steps that compile
(the compile time is printed apart). ``fit``: one epoch of the demo CNN (the demo's data, batch
and pipeline) through the bare pipeline (submit every batch, drain) vs ``fit`` with validation,
``log_dir`` and ``checkpoint_dir``, with the validation pass (timed inside ``fit``) subtracted:
what is left is the overhead of fit's bookkeeping, logging and checkpointing. Every measurement
runs with ``--threads`` intra-op threads (default 1 on CPU). On CUDA pass ``--device cuda``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

import decouple
from decouple.experiments import torch_threads
from decouple.experiments.image_data import image_data
from decouple.experiments.models import DemoCNN
from decouple.runtime import fit as fit_module
from decouple.runtime.callbacks import CallbackList
from decouple.runtime.checkpoints import checkpoint_name, history_state, prune, rng_state, save_atomically
from decouple.runtime.loggers import loggers_for
from decouple.runtime.state import model_state
from decouple.runtime.validation import validate

SPLITS = {
    "resnet18": ["layer1", "layer2", "layer3"],
    "vit": ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_3", "encoder.layers.encoder_layer_5"],
}


def build(name: str) -> tuple[torch.nn.Module, int]:
    """The model and its input size: torchvision's resnet18, or a small ViT (6 layers, width 192, patches 4 on 32x32)."""
    torch.manual_seed(0)
    if name == "resnet18":
        return torchvision.models.resnet18(weights=None, num_classes=10), 32
    if name == "vit":
        vit = torchvision.models.VisionTransformer(
            image_size=32, patch_size=4, num_layers=6, num_heads=6, hidden_dim=192, mlp_dim=768, num_classes=10
        )
        return vit, 32
    raise SystemExit(f"unknown model {name!r}; choose resnet18 or vit")


def median_times(steps: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each step, calls interleaved round by round."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _stepper(
    name: str, model: torch.nn.Module, method: str, size: int, batch: int, device: str, **kw: Any
) -> Callable[[], Any]:
    dm = decouple.convert(model, method=method, splits=SPLITS[name], example_inputs=(torch.randn(2, 3, size, size),),
                          devices=device, **kw)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = (torch.arange(batch) % 10).to(device)

    def step() -> None:
        dm.train_step(x, target=y)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def compare(args: argparse.Namespace, variants: dict[str, dict[str, Any]], warmup: int) -> None:
    base = next(iter(variants))
    print(f"{'model':<10}{'method':<8}" + "".join(f"{k + ' s/step':>16}" for k in variants) + "".join(
        f"{k + '/' + base:>16}" for k in list(variants)[1:]))  # fmt: skip
    for name in args.models:
        model, size = build(name)
        for method in args.methods:
            steps = {}
            for label, kw in variants.items():
                steps[label] = _stepper(name, model, method, size, args.batch, args.device, **kw)
                start = time.perf_counter()
                for _ in range(warmup):
                    steps[label]()
                if warmup > 1:
                    print(f"  ({name} {method} {label}: {warmup} warm-up steps in {time.perf_counter() - start:.1f} s)")
            med = median_times(steps, args.repeats)
            ratios = "".join(f"{med[k] / med[base]:>16.2f}" for k in list(variants)[1:])
            print(f"{name:<10}{method:<8}" + "".join(f"{med[k]:>16.3f}" for k in variants) + ratios, flush=True)


def fit_overhead(args: argparse.Namespace) -> None:
    data = image_data("mnist", batch_size=128, train_limit=args.train_limit)
    torch.manual_seed(0)
    model = DemoCNN(data.channels, data.num_classes, data.size)

    def fresh() -> decouple.DecoupledModel:
        return decouple.convert(model, "scl", splits=["block1"], example_inputs=(data.example,), devices=args.device)

    bare_times, fit_times, validation_times = [], [], []
    with fresh().pipeline() as pipe:  # warm-up: first-call costs out of the measurements
        for x, y in list(data.train)[:4]:
            pipe.submit(x, target=y)

    def bare_epoch() -> None:
        dm = fresh()
        start = time.perf_counter()
        with dm.pipeline() as pipe:
            for x, y in data.train:
                pipe.submit(x, target=y)
            pipe.drain()
        bare_times.append(time.perf_counter() - start)

    def timed_validation(dm: Any, loader: Any) -> dict[str, float]:
        start = time.perf_counter()
        metrics = validate(dm, loader)
        validation_times.append(time.perf_counter() - start)
        return metrics

    def fit_epoch() -> decouple.DecoupledModel:
        dm = fresh()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            dm.fit(data.train, epochs=1, progress=False, validation=data.test, log_dir=f"{tmp}/logs",
                   checkpoint_dir=f"{tmp}/ckpt")  # fmt: skip
            fit_times.append(time.perf_counter() - start)
        return dm

    fit_module.validate = timed_validation  # type: ignore[assignment]  # the validation pass inside fit, timed
    for r in range(args.epochs):  # alternate which runs first, so a drift in the machine's load hits both
        if r % 2:
            dm = fit_epoch()
            bare_epoch()
        else:
            bare_epoch()
            dm = fit_epoch()
    bare, full, val = (statistics.median(t) for t in (bare_times, fit_times, validation_times))
    checkpoint, logging = bookkeeping(dm, len(data.train), args.epochs)
    print(f"one epoch of the demo CNN (scl, 2 stages, {len(data.train)} batches of 128), medians of {args.epochs}:")
    print(f"  bare pipeline (submit, drain)                      {bare:8.2f} s")
    print(f"  fit(validation, log_dir, checkpoint_dir)           {full:8.2f} s")
    print(f"  of which the validation pass ({len(data.test.dataset)} images)          {val:8.2f} s")  # type: ignore[arg-type]
    print(
        f"  overhead excluding validation: {full - val - bare:+.2f} s = {100 * (full - val - bare) / bare:+.1f}% of the epoch"
    )
    print("  the same parts timed alone (medians), robust to a noisy machine:")
    print(
        f"    checkpoint (state, atomic write, prune)          {checkpoint:8.3f} s = {100 * checkpoint / bare:.2f}% of the epoch"
    )
    print(
        f"    CSV + TensorBoard loggers, every step and epoch  {logging:8.3f} s = {100 * logging / bare:.2f}% of the epoch"
    )


def bookkeeping(dm: decouple.DecoupledModel, batches: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one epoch's checkpoint and of one epoch's logging (every step's hook and the epoch's)."""
    stats = decouple.RunStats({"stage0": 1.0, "stage1": 1.0}, batches, batches * 128, 30.0, 0.9,
                              learning_rates={"stage0": 1e-3, "stage1": 1e-3}, validation={"accuracy": 0.9, "loss": 0.3})  # fmt: skip
    saves, logs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(max(repeats, 3)):
            start = time.perf_counter()
            state = {**model_state(dm), "epoch": r + 1, "history": history_state([stats] * (r + 1)), "rng": rng_state()}
            save_atomically(state, Path(tmp) / "ckpt" / checkpoint_name(r + 1))
            prune(Path(tmp) / "ckpt", 2)
            saves.append(time.perf_counter() - start)
            hooks = CallbackList(loggers_for(Path(tmp) / f"logs{r}"))
            start = time.perf_counter()
            for b in range(batches):
                hooks.on_step(dm, decouple.StepLog(0, b, b + 1, {"stage0": 1.0, "stage1": 1.0}, {"stage0": 1e-3}))
            hooks.on_epoch_end(dm, 0, stats)
            hooks.on_fit_end(dm, [stats])
            logs.append(time.perf_counter() - start)
    return statistics.median(saves), statistics.median(logs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("precision", "compile", "fit"))
    parser.add_argument("--models", nargs="+", default=["resnet18", "vit"], choices=sorted(SPLITS))
    parser.add_argument("--methods", nargs="+", default=["scl", "bp"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4, help="fit: epochs measured (each from a fresh conversion)")
    parser.add_argument("--train-limit", type=int, help="fit: the first N training images (default: all 12,000)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="intra-op threads (default on cpu: 1)")
    args = parser.parse_args()
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    print(f"torch {torch.__version__}, device {args.device}, threads {threads or torch.get_num_threads()}")
    with torch_threads(threads):
        if args.what == "precision":
            variants: dict[str, dict[str, Any]] = {"fp32": {}, "bf16": {"precision": "bf16"}}
            if args.device.startswith("cuda"):
                variants["fp16"] = {"precision": "fp16"}
            compare(args, variants, warmup=1)
        elif args.what == "compile":
            compare(args, {"eager": {}, "compiled": {"compile": True}}, warmup=3)
        else:
            fit_overhead(args)


if __name__ == "__main__":
    main()
