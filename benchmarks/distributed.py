"""Throughput of multi-process training (one stage per rank, gloo) against sequential decoupled training.

    python benchmarks/distributed.py [--batches 40] [--warmup 5] [--width 1024] [--depth 8] [--replicas 2]

The deep MLP of ``deep_mlp.py`` (shared with the pipeline benchmark), cut into 2 equal stages,
trained with SCL on batches of 256 bundled MNIST images. Measured side by side in one run:
``dm.train_step`` in this process with 1 and with 2 intra-op threads, the threaded 2-stage
pipeline (``dm.pipeline()``, one thread per stage, 1 intra-op thread each), and 2 ranks started
by ``decouple.distributed.launch`` with 1 thread each (training time inside the ranks, after a
warm-up; start-up is reported apart). Prints samples per second and the ratios.

With ``--replicas R`` it also runs the 2 stages on ``R`` data-parallel replicas (``2 * R`` ranks,
1 thread each, the same global batches split into ``R`` shards) and reports their throughput and
the all-reduce share of a step (time in the gradient all-reduce over the slowest rank's training
time). On a 2-core machine more ranks than cores only measure correctness and overhead.
"""

from __future__ import annotations

import argparse
import time

import torch
from deep_mlp import BATCH_SIZE, convert_deep_mlp, mnist_batches

from decouple.distributed import StageTrainer, launch


def sequential_seconds(args: argparse.Namespace, threads: int) -> float:
    """Seconds ``dm.train_step`` takes for ``args.batches`` batches after ``args.warmup``."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dm = convert_deep_mlp(2, width=args.width, depth=args.depth)
        data = mnist_batches(args.warmup + args.batches)
        for x, y in data[: args.warmup]:
            dm.train_step(x, target=y)
        start = time.perf_counter()
        for x, y in data[args.warmup :]:
            dm.train_step(x, target=y)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def pipeline_seconds(args: argparse.Namespace) -> float:
    """Seconds the threaded pipeline (one thread per stage, 1 intra-op thread) takes, fill and drain included."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dm = convert_deep_mlp(2, width=args.width, depth=args.depth)
        data = mnist_batches(args.warmup + args.batches)
        with dm.pipeline() as pipe:
            for x, y in data[: args.warmup]:
                pipe.submit(x, target=y)
            pipe.drain()
            start = time.perf_counter()
            for x, y in data[args.warmup :]:
                pipe.submit(x, target=y)
            pipe.drain()
            return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def rank_seconds(width: int, depth: int, warmup: int, batches: int, replicas: int = 1) -> tuple[float, float]:
    """In each rank: the slowest rank's training time for ``batches`` batches after a warm-up fit, and this
    rank's seconds in the gradient all-reduce during them."""
    trainer = StageTrainer(convert_deep_mlp(2, width=width, depth=depth), replicas=replicas)
    data = mnist_batches(warmup + batches) if trainer.rank == 0 else None
    trainer.fit(data[:warmup] if data else None)
    before = trainer.averager.seconds if trainer.averager is not None else 0.0
    seconds = trainer.fit(data[warmup:] if data else None).seconds
    reduce = (trainer.averager.seconds if trainer.averager is not None else 0.0) - before
    return seconds, reduce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=1, help="also run 2 stages x R data-parallel replicas")
    args = parser.parse_args()

    samples = args.batches * BATCH_SIZE
    rows = {f"sequential, {t} thread{'s' if t > 1 else ''}": sequential_seconds(args, t) for t in (1, 2)}
    rows["threaded pipeline, 1 thread/stage"] = pipeline_seconds(args)
    start = time.perf_counter()
    results = launch(rank_seconds, 2, args.width, args.depth, args.warmup, args.batches, threads=1)
    wall = time.perf_counter() - start
    rows["2 ranks (gloo), 1 thread each"] = max(s for s, _ in results)
    share = None
    if args.replicas > 1:
        name = f"2 stages x {args.replicas} replicas, 1 thread each"
        replicated = launch(rank_seconds, 2 * args.replicas, args.width, args.depth, args.warmup, args.batches,
                            args.replicas, threads=1)  # fmt: skip
        rows[name] = max(s for s, _ in replicated)
        share = max(r / s for s, r in replicated)

    print(
        f"deep MLP width {args.width} depth {args.depth}, 2 stages, scl, batch {BATCH_SIZE}, {args.batches} timed batches"
    )
    base = rows["sequential, 1 thread"]
    for name, secs in rows.items():
        print(f"  {name:32s} {samples / secs:9.1f} samples/s   x{base / secs:.2f} vs sequential 1 thread")
    ranks = rows["2 ranks (gloo), 1 thread each"]
    print(f"  2 ranks vs sequential 2 threads: x{rows['sequential, 2 threads'] / ranks:.2f}")
    print(f"  2 ranks vs threaded pipeline: x{rows['threaded pipeline, 1 thread/stage'] / ranks:.2f}")
    print(f"  (launch wall time including process start-up and warm-up: {wall:.1f}s)")
    if share is not None:
        print(f"  all-reduce share of the slowest replica rank's training time: {share:.1%}")


if __name__ == "__main__":
    main()
