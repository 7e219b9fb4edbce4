"""convert() wall time against its targets, and the cost of one SCL train_step relative to one backprop step.

    python benchmarks/convert_overhead.py [--models resnet50 vit_b_16] [--batch 8] [--size 224] [--repeats 5]
    python benchmarks/convert_overhead.py --targets-only          # only the conversion targets

The conversion targets are measured side by side in one run (median of ``--repeats`` conversions
where one takes under a few seconds, else of two):

- a 12-layer BERT-base config (768 hidden, built from ``BertConfig()``, no weights downloaded)
  converts through export (``splits=4``) in under 3x the time of one ``torch.export.export`` of the
  same model with the same inputs and dynamic sizes (every dimension ``Dim.AUTO``, as ``convert()``
  asks for first);
- the slowest tiny configs of ``benchmarks/hf_zoo.csv`` (by ``convert_s``; the families of
  ``tests/test_hf_models.py`` when there is no CSV) convert in under 10 s each, as the zoo does
  (``splits=4``, fewer when the model has fewer candidate points);
- resnet50 converts through fx (``splits=["layer1", "layer2", "layer3"]``) in under 0.25 s.

Both steps run on the same model, batch and thread count, interleaved (bp, scl, bp, scl, ...)
so that machine noise hits both alike; the ratio of medians is what to read. The SCL step does
more work than backprop by design (each stage also runs its projection head and SupCon loss).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision

if __package__ in (None, ""):  # run as a script: import the zoo catalogs from this folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import decouple

HERE = os.path.dirname(os.path.abspath(__file__))
#: tiny configs measured when benchmarks/hf_zoo.csv is missing (the families of tests/test_hf_models.py)
TINY_DEFAULT = ["BertForSequenceClassification", "Qwen2ForSequenceClassification", "T5ForSequenceClassification",
                "DebertaV2ForSequenceClassification", "SwinForImageClassification"]  # fmt: skip

SPLITS = {
    "resnet50": ["layer1", "layer2", "layer3"],
    "resnet18": ["layer1", "layer2", "layer3"],
    "vit_b_16": ["encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_5", "encoder.layers.encoder_layer_8"],
}


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """The median of ``repeats`` runs of ``fn`` (of two when the first takes over 5 s)."""
    times = [timed(fn)]
    for _ in range(repeats - 1 if times[0] < 5 else 1):
        times.append(timed(fn))
    return statistics.median(times)


def bert_base_target(repeats: int, tokens: int = 32) -> dict[str, float]:
    """convert() of a 12-layer BERT-base config through export, against one torch.export.export of it."""
    import transformers

    from decouple.frontend.export import dynamic_dims

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2, use_cache=False))
    ids = torch.randint(4, 1000, (2, tokens))
    named = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    dynamic = {k: dynamic_dims(v) for k, v in named.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_s = median_time(
            lambda: torch.export.export(model, (), named, strict=False, dynamic_shapes=dynamic), repeats
        )
        convert_s = median_time(
            lambda: decouple.convert(model, "scl", 4, named, tracer="export", num_classes=2), repeats
        )
    return {"convert_s": convert_s, "export_s": export_s, "params": sum(p.numel() for p in model.parameters())}


def slowest_tiny(count: int) -> list[str]:
    """The ``count`` tiny configs of benchmarks/hf_zoo.csv that took longest to convert (any method)."""
    path = os.path.join(HERE, "hf_zoo.csv")
    if not os.path.exists(path):
        return TINY_DEFAULT
    times: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                seconds = float(row["convert_s"])
            except ValueError:
                continue
            if seconds == seconds:  # not NaN: it converted
                times[row["model"]] = max(times.get(row["model"], 0.0), seconds)
    return sorted(times, key=lambda n: -times[n])[:count]


def tiny_target(name: str, dynamic_sizes: str = "all") -> dict[str, float]:
    """convert() of one tiny Hugging Face config as benchmarks/hf_zoo.py does it (``splits=4``, scl)."""
    from benchmarks import coverage, hf_zoo

    case = hf_zoo.model_case(name)
    model = case.build()
    example = coverage._rows(case.inputs(), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds = timed(lambda: coverage._convert(model, "scl", example, case.classes, dynamic_sizes=dynamic_sizes))
    return {"convert_s": seconds, "params": sum(p.numel() for p in model.parameters())}


def resnet50_target(repeats: int) -> float:
    model = torchvision.models.resnet50(weights=None, num_classes=10)
    example = (torch.randn(2, 3, 224, 224),)
    decouple.convert(model, "scl", SPLITS["resnet50"], example, tracer="fx")  # warm-up: first-call imports
    return median_time(
        lambda: decouple.convert(model, "scl", SPLITS["resnet50"], example, tracer="fx"), max(repeats, 5)
    )


def targets(repeats: int, tiny: list[str]) -> None:
    """The issue's conversion targets, side by side: one row each, with whether it is met."""
    print("| target | measured | reference | ratio | goal | met |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    r50 = resnet50_target(repeats)
    print(f"| resnet50 through fx | {r50:.3f} s | | | < 0.25 s | {'yes' if r50 < 0.25 else 'NO'} |", flush=True)
    bert = bert_base_target(repeats)
    ratio = bert["convert_s"] / bert["export_s"]
    print(
        f"| BERT-base config ({bert['params'] / 1e6:.0f}M parameters) through export | {bert['convert_s']:.2f} s | "
        f"one torch.export.export: {bert['export_s']:.2f} s | {ratio:.2f}x | < 3x | {'yes' if ratio < 3 else 'NO'} |",
        flush=True,
    )
    for name in tiny:
        r = tiny_target(name)
        s = r["convert_s"]
        print(f"| tiny {name} ({r['params'] / 1e3:.0f}k parameters) | {s:.2f} s | | | < 10 s | "
              f"{'yes' if s < 10 else 'NO'} |", flush=True)  # fmt: skip
        if s >= 10:  # what fewer dynamic sizes buy (not the target's setting: said so in the row)
            for sizes in ("batch", "none"):
                t = tiny_target(name, sizes)["convert_s"]
                print(f"| ... with dynamic_sizes={sizes!r} | {t:.2f} s | | | (< 10 s) | {'yes' if t < 10 else 'no'} |",
                      flush=True)  # fmt: skip


def bench(name: str, batch: int, size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    example = (torch.randn(2, 3, size, size),)
    convert_times = [
        timed(lambda: decouple.convert(model, method="scl", splits=SPLITS[name], example_inputs=example))
        for _ in range(3)
    ]
    dm = decouple.convert(model, method="scl", splits=SPLITS[name], example_inputs=example)
    reference = getattr(torchvision.models, name)(weights=None, num_classes=10)
    opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.arange(batch) % 4

    def bp_step() -> None:
        loss = F.cross_entropy(reference(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def scl_step() -> None:
        dm.train_step(x, target=y)

    bp_step(), scl_step()  # warm-up
    bp, scl = [], []
    for _ in range(repeats):
        bp.append(timed(bp_step))
        scl.append(timed(scl_step))
    return {
        "convert_s": statistics.median(convert_times),
        "bp_step_s": statistics.median(bp),
        "scl_step_s": statistics.median(scl),
        "ratio": statistics.median(scl) / statistics.median(bp),
        "params": sum(p.numel() for p in model.parameters()),
        "heads": dm.param_counts().affiliated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"], choices=sorted(SPLITS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tiny", nargs="*", help="tiny Hugging Face configs to time (default: slowest of hf_zoo.csv)")
    parser.add_argument("--slowest", type=int, default=3, help="how many of hf_zoo.csv's slowest configs to time")
    parser.add_argument("--targets-only", action="store_true", help="only the conversion targets, no step timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.size}x{args.size}")
    targets(args.repeats, args.tiny if args.tiny is not None else slowest_tiny(args.slowest))
    if args.targets_only:
        return
    print()
    print("| model | parameters | SCL head parameters | convert() | bp step | SCL step | SCL / bp |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.models:
        r = bench(name, args.batch, args.size, args.repeats)
        print(
            f"| {name} | {r['params']:,} | {r['heads']:,} | {r['convert_s']:.2f} s | {r['bp_step_s']:.3f} s | "
            f"{r['scl_step_s']:.3f} s | {r['ratio']:.2f}x |"
        )


if __name__ == "__main__":
    main()
