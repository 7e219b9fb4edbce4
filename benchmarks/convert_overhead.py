"""convert() wall time, and the cost of one SCL train_step relative to one plain backprop step.

    python benchmarks/convert_overhead.py [--models resnet50 vit_b_16] [--batch 8] [--size 224] [--repeats 5]

Both steps run on the same model, batch and thread count, interleaved (bp, scl, bp, scl, ...)
so that machine noise hits both alike; the ratio of medians is what to read. The SCL step does
more work than backprop by design (each stage also runs its projection head and SupCon loss).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

import decouple

SPLITS = {
    "resnet50": ["layer1", "layer2", "layer3"],
    "resnet18": ["layer1", "layer2", "layer3"],
    "vit_b_16": ["encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_5", "encoder.layers.encoder_layer_8"],
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.size}x{args.size}")
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
