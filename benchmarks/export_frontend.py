"""The torch.export frontend against the fx frontend on the same models: conversion and step time.

    python benchmarks/export_frontend.py [--steps 20] [--batch 32]

Both frontends trace the same model into graphs of the same computation (fx keeps module
calls, export records aten ops), so a training step should cost the same; conversion costs more
with export (it runs the model on fake tensors twice, once per training mode). Prints, per model,
the median of ``--steps`` timed steps after warm-up, side by side in one run, and the ratios
export / fx. Steps of the two frontends are timed in turns, so load on a shared machine hits
both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

import decouple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from text_classification import LSTMClassifier, TransformerClassifier


def _interleaved_medians(fns: dict[str, Callable[[], Any]], steps: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns so machine load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _text_inputs(batch: int, length: int = 32, vocab: int = 1000) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, vocab, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[batch // 2 :, length // 2 :] = False
    return {"ids": ids * mask, "attention_mask": mask}


def cases(batch: int) -> dict[str, tuple[Callable[[], nn.Module], list[str], dict[str, torch.Tensor]]]:
    images = {"x": torch.randn(batch, 3, 32, 32)}
    text = _text_inputs(batch)
    return {
        "resnet18 (32x32)": (
            lambda: torchvision.models.resnet18(num_classes=10),
            ["layer1", "layer2", "layer3"],
            images,
        ),
        "transformer classifier": (
            lambda: TransformerClassifier(1000, 64, 4, 32),
            ["embedding", "layers.0", "layers.1"],
            text,
        ),
        "bi-LSTM classifier": (lambda: LSTMClassifier(1000, 64, 64), ["embedding", "lstm1", "lstm2"], text),
    }


def measure(
    build: Callable[[], nn.Module], splits: list[str], inputs: dict[str, torch.Tensor], steps: int
) -> dict[str, dict[str, float]]:
    """Conversion, training-step and inference seconds per frontend, for one model."""
    example = {k: v[:2] for k, v in inputs.items()}
    y = torch.arange(next(iter(inputs.values())).shape[0]) % 2
    results: dict[str, dict[str, float]] = {}
    models = {}
    for tracer in ("fx", "export"):
        torch.manual_seed(0)
        model = build()
        start = time.perf_counter()
        models[tracer] = decouple.convert(model, "scl", splits, example, tracer=tracer)
        results[tracer] = {"convert": time.perf_counter() - start}
    steps_ = _interleaved_medians(
        {t: (lambda dm=dm: dm.train_step(**inputs, target=y)) for t, dm in models.items()}, steps
    )
    infer = {t: dm.eval().inference_module() for t, dm in models.items()}
    with torch.no_grad():
        forward = _interleaved_medians({t: (lambda m=m: m(**inputs)) for t, m in infer.items()}, steps)
    for t in models:
        results[t].update(step=steps_[t], inference=forward[t])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(
        f"batch {args.batch}, median of {args.steps} steps, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'model':<24} {'frontend':<8} {'convert s':>10} {'step ms':>9} {'infer ms':>9}")
    for name, (build, splits, inputs) in cases(args.batch).items():
        results = measure(build, splits, inputs, args.steps)
        for tracer, r in results.items():
            print(f"{name:<24} {tracer:<8} {r['convert']:>10.2f} {1e3 * r['step']:>9.1f} {1e3 * r['inference']:>9.1f}")
        ratio = {k: results["export"][k] / results["fx"][k] for k in results["fx"]}
        print(f"{name:<24} {'ratio':<8} {ratio['convert']:>10.2f} {ratio['step']:>9.2f} {ratio['inference']:>9.2f}")


if __name__ == "__main__":
    main()
