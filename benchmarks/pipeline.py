"""Throughput of the pipelined runtime against backprop, sequential decoupled training and GPipe.

    PYTHONPATH=. python benchmarks/pipeline.py            # the full run
    PYTHONPATH=. python benchmarks/pipeline.py --quick    # a short check that everything runs

Model: a deep MLP (784 -> width x depth -> 10) converted with ``method="scl", splits=2``: the
split is balanced by training FLOPs with stage 0's projection head and SupCon counted. Every mode
trains on the same synthetic batches, one after another in this one run (modes interleaved over
``--rounds``; the median round is reported):

  bp-1t, bp-2t   plain PyTorch backprop (the model + Adam), 1 and 2 intra-op threads
  seq-1t, seq-2t decouple's sequential ``train_step``, 1 and 2 threads
  pipe-1t        decouple's 2-stage cross-batch pipeline, 1 intra-op thread per stage
  pipe-1t-s1     the same with ``backward_slots=1`` (one stage in its backward pass at a time)
  gpipe          ``torch.distributed.pipelining.ScheduleGPipe``: 2 processes on gloo, 1 thread
                 each, the model cut in the middle (no heads), ``--microbatches`` micro-batches
  stage k alone  stage k's forward, local loss, backward and step alone, 1 thread
  alone x2 thr   every stage alone at the same time, one thread each, no hand-off (what the GIL allows)
  alone x2 proc  the same in one process per stage (no GIL): the ceiling of any 1-thread-per-stage runtime

Prints images/s, ratios and the pipeline efficiency = pipe-1t / (slowest stage alone).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import decouple
from decouple.runtime.step import backward_local, forward_local
from decouple.tree import move_tree as move

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class DeepMLP(nn.Module):
    """``layers.0 .. layers.{depth-1}`` (Linear + ReLU) then ``head``."""

    def __init__(self, width: int, depth: int, inputs: int = 784, classes: int = 10) -> None:
        super().__init__()
        widths = [inputs] + [width] * depth
        self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in itertools.pairwise(widths)])
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


def make_batches(n: int, size: int, seed: int = 0) -> Batches:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 784, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def model(args: argparse.Namespace) -> DeepMLP:
    torch.manual_seed(0)
    return DeepMLP(args.width, args.depth)


def convert(args: argparse.Namespace) -> decouple.DecoupledModel:
    return decouple.convert(model(args), method="scl", splits=2, example_inputs=(torch.randn(args.batch_size, 784),))


# -- modes: each returns seconds for the measured batches ------------------------------------
def run_bp(args: argparse.Namespace, warm: Batches, data: Batches) -> Callable[[], float]:
    net = model(args)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def steps(batches: Batches) -> None:
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()

    return lambda: timed(steps, warm, data)


def run_sequential(args: argparse.Namespace, warm: Batches, data: Batches) -> Callable[[], float]:
    dm = convert(args)

    def steps(batches: Batches) -> None:
        for x, y in batches:
            dm.train_step(x, target=y)

    return lambda: timed(steps, warm, data)


def run_pipeline(
    args: argparse.Namespace, warm: Batches, data: Batches, backward_slots: int | None = None
) -> Callable[[], float]:
    dm = convert(args)

    def steps(batches: Batches) -> None:
        with dm.pipeline(depth=args.queue_depth, backward_slots=backward_slots) as pipe:
            for x, y in batches:
                pipe.submit(x, target=y)
            pipe.drain()

    return lambda: timed(steps, warm, data)


class StageAlone:
    """Stage ``k`` training on its own inputs (precomputed), as if the other stages cost nothing."""

    def __init__(self, args: argparse.Namespace, warm: Batches, data: Batches, k: int) -> None:
        self.dm = convert(args)
        self.stage = list(self.dm.stages)[k]
        self.k = k
        self.warm, self.data = self.inputs(warm), self.inputs(data)

    def inputs(self, batches: Batches) -> list[tuple[dict[str, Any], Any]]:
        out = []
        with torch.no_grad():
            for x, y in batches:
                message = self.dm.bind((x,), {})
                for stage in list(self.dm.stages)[: self.k]:
                    message, _ = stage(move(message, stage.device))
                out.append((message, y))
        return out

    def steps(self, prepared: list[tuple[dict[str, Any], Any]]) -> None:
        for message, carry in prepared:
            result = forward_local(self.stage, self.dm.training_config, message, carry)
            assert result.result is not None
            backward_local(self.stage, self.dm.training_config, result.result.loss)


def run_stage_alone(args: argparse.Namespace, warm: Batches, data: Batches, k: int) -> Callable[[], float]:
    alone = StageAlone(args, warm, data, k)
    return lambda: timed(alone.steps, alone.warm, alone.data)


def run_stages_in_threads(args: argparse.Namespace, warm: Batches, data: Batches, stages: int) -> Callable[[], float]:
    """Every stage alone, all at once in threads: the overlap the GIL allows, without any hand-off."""
    import threading

    alone = [StageAlone(args, warm, data, k) for k in range(stages)]

    def run() -> float:
        barrier = threading.Barrier(stages)
        spans: list[tuple[float, float]] = []

        def work(a: StageAlone) -> None:
            torch.set_num_threads(torch.get_num_threads())  # adopt the process setting in this thread
            a.steps(a.warm)
            barrier.wait()
            start = time.perf_counter()
            a.steps(a.data)
            spans.append((start, time.perf_counter()))

        threads = [threading.Thread(target=work, args=(a,)) for a in alone]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return max(e for _, e in spans) - min(s for s, _ in spans)

    return run


def _stage_process(k: int, args: argparse.Namespace, barrier: Any, out: str) -> None:
    torch.set_num_threads(1)
    alone = StageAlone(
        args, make_batches(args.warmup, args.batch_size, 1), make_batches(args.batches, args.batch_size, 2), k
    )
    alone.steps(alone.warm)
    barrier.wait()
    start = time.perf_counter()
    alone.steps(alone.data)
    with open(f"{out}.{k}", "w") as f:
        json.dump({"start": start, "end": time.perf_counter()}, f)


def run_stages_in_processes(args: argparse.Namespace, stages: int) -> float:
    """Every stage alone, all at once in processes (1 thread each): the overlap without the GIL."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(stages)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "span")
        procs = [ctx.Process(target=_stage_process, args=(k, args, barrier, out)) for k in range(stages)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        spans = []
        for k in range(stages):
            with open(f"{out}.{k}") as f:
                spans.append(json.load(f))
    return max(s["end"] for s in spans) - min(s["start"] for s in spans)


def timed(steps: Callable[[Any], None], warm: Any, data: Any) -> float:
    steps(warm)
    start = time.perf_counter()
    steps(data)
    return time.perf_counter() - start


# -- GPipe (torch.distributed.pipelining) ----------------------------------------------------
def _gpipe_worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        net = model(args)
        half = args.depth // 2
        part = nn.Sequential(*net.layers[:half]) if rank == 0 else nn.Sequential(*net.layers[half:], net.head)
        stage = PipelineStage(part, rank, 2, torch.device("cpu"))
        schedule = ScheduleGPipe(stage, args.microbatches, loss_fn=F.cross_entropy)
        opt = torch.optim.Adam(part.parameters(), lr=1e-3)
        warm, data = make_batches(args.warmup, args.batch_size, 1), make_batches(args.batches, args.batch_size, 2)

        def steps(batches: Batches) -> None:
            for x, y in batches:
                opt.zero_grad(set_to_none=True)
                if rank == 0:
                    schedule.step(x)
                else:
                    schedule.step(target=y)
                opt.step()

        steps(warm)
        dist.barrier()
        start = time.perf_counter()
        steps(data)
        dist.barrier()
        seconds = time.perf_counter() - start
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"seconds": seconds}, f)
    finally:
        dist.destroy_process_group()


def run_gpipe(args: argparse.Namespace) -> float | str:
    """Seconds for the measured batches, or why GPipe could not run here."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "gpipe.json")
        try:
            mp.spawn(_gpipe_worker, args=(args, port, out), nprocs=2, join=True)
            with open(out) as f:
                return float(json.load(f)["seconds"])
        except Exception as exc:  # report why, keep the other numbers
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"


# -- the run ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="measured batches per mode and round")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-depth", type=int, default=2)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="a short run: 8 batches, 1 round")
    parser.add_argument("--no-gpipe", action="store_true")
    parser.add_argument("--timeline", metavar="PNG", help="also record one pipelined pass and draw it here")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.warmup, args.rounds = 8, 2, 1

    warm, data = make_batches(args.warmup, args.batch_size, 1), make_batches(args.batches, args.batch_size, 2)
    images = args.batches * args.batch_size
    dm = convert(args)
    print(
        f"DeepMLP 784 -> {args.width} x {args.depth} -> 10, batch {args.batch_size}, {args.batches} measured batches "
        f"x {args.rounds} rounds, torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    print(dm.balance.describe() if dm.balance else "", "| splits:", dm.balance.splits if dm.balance else "")

    modes: dict[str, tuple[int, Callable[[], float]]] = {
        "bp-1t": (1, run_bp(args, warm, data)),
        "bp-2t": (2, run_bp(args, warm, data)),
        "seq-1t": (1, run_sequential(args, warm, data)),
        "seq-2t": (2, run_sequential(args, warm, data)),
        "pipe-1t": (1, run_pipeline(args, warm, data)),
        "pipe-1t-s1": (1, run_pipeline(args, warm, data, backward_slots=1)),
    }
    for k in range(dm.num_stages):
        modes[f"stage {k} alone"] = (1, run_stage_alone(args, warm, data, k))
    modes["alone x2 thr"] = (1, run_stages_in_threads(args, warm, data, dm.num_stages))
    times: dict[str, list[float]] = {name: [] for name in modes}
    before = torch.get_num_threads()
    for _ in range(args.rounds):
        for name, (threads, run) in modes.items():
            torch.set_num_threads(threads)
            times[name].append(run())
    torch.set_num_threads(before)
    rate = {name: images / statistics.median(t) for name, t in times.items()}
    rate["alone x2 proc"] = images / statistics.median(
        run_stages_in_processes(args, dm.num_stages) for _ in range(args.rounds)
    )
    gpipe = None if args.no_gpipe else run_gpipe(args)
    if isinstance(gpipe, float):
        rate["gpipe"] = images / gpipe

    base = rate["seq-1t"]
    print(f"\n{'mode':<16}{'images/s':>10}{'x seq-1t':>10}{'x bp-2t':>10}")
    for name, r in rate.items():
        print(f"{name:<16}{r:>10.1f}{r / base:>10.2f}{r / rate['bp-2t']:>10.2f}")
    if isinstance(gpipe, str):
        print(f"gpipe: could not run ({gpipe})")
    slowest = min(rate[f"stage {k} alone"] for k in range(dm.num_stages))
    print(f"\npipeline efficiency = pipe-1t / slowest stage alone = {rate['pipe-1t'] / slowest:.2f}")
    print(
        f"pipe-1t / seq-1t = {rate['pipe-1t'] / base:.2f}  (ideal for these stages: "
        f"{sum(1 / rate[f'stage {k} alone'] for k in range(dm.num_stages)) * slowest:.2f})"
    )
    same = rate["pipe-1t"] / rate["bp-2t"]  # the same 2 cores: 2 stage threads x 1 vs 2 intra-op threads
    verdict = "the pipeline is faster" if same >= 1 else "plain backprop is faster: the pipeline loses on this CPU"
    print(f"with the same {dm.num_stages} cores: pipe-1t / bp-2t = {same:.2f} ({verdict})")
    print(
        f"every stage alone at once, as a share of the slowest stage alone: in threads "
        f"{rate['alone x2 thr'] / slowest:.2f} (GIL, no hand-off), in processes {rate['alone x2 proc'] / slowest:.2f} (no GIL)"
    )
    if args.timeline:
        record_timeline(args, data, args.timeline)


def record_timeline(args: argparse.Namespace, data: Batches, path: str) -> None:
    """One recorded pipelined pass: how busy each stage was, and the Gantt chart."""
    dm = convert(args)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with dm.pipeline(depth=args.queue_depth, record=True) as pipe:
            for x, y in data:
                pipe.submit(x, target=y)
            pipe.drain()
    finally:
        torch.set_num_threads(before)
    timeline = dm.timeline()
    busy = ", ".join(f"stage {k} {u:.0%}" for k, u in enumerate(timeline.utilization()))
    per_batch = ", ".join(f"stage {k} {b / len(data) * 1e3:.1f} ms" for k, b in enumerate(timeline.busy()))
    print(f"recorded pass: busy {busy}; busy time per batch {per_batch}; chart: {timeline.render_png(path)}")


if __name__ == "__main__":
    main()
