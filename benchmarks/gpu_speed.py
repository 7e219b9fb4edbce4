"""The SCPL paper's speed table at reduced scale: bp vs scl vs the scl pipeline vs GPipe, on one device.

    python benchmarks/gpu_speed.py --device cuda --out results/speed     # on a GPU (about two minutes on an H200)
    python benchmarks/gpu_speed.py --device cpu --out /tmp/speed         # the dry run: tiny sizes, every path

Models, the paper's at reduced scale, both cut into 4 stages: VGG (``decouple.experiments`` VGG,
width 64) on 64x64 images of 200 classes (Tiny-ImageNet's shape); a Transformer text classifier
(token + position embedding 256 wide, 3 encoder layers of 4 heads, mean over 128 tokens, 2
classes: IMDB's shape), split after the embedding and the first two layers. ``--device cpu``
uses tiny versions of both (the dry run; its times mean nothing).

Modes, each on the same model, batches and device, in one run:

  bp         a plain PyTorch loop: the model, one Adam, cross-entropy (the paper's BP)
  scl        decouple's sequential ``train_step``
  scl-pipe   decouple's pipeline, ``dm.pipeline(depth=2)``: every stage on the one device, each
             stage's thread on its own CUDA stream (on a CPU: a thread per stage with
             cores / stages intra-op threads, while the other modes use every core)
  gpipe      ``torch.distributed.pipelining`` on the one device: the plain model cut at the same
             points, ``ScheduleLoopedBFS`` (GPipe's fill-drain order for several stages held by
             one rank), ``--microbatches`` micro-batches, one process

Precisions: fp32, and bf16: ``torch.autocast`` in the caller's thread for bp and gpipe,
``convert(precision="bf16")`` for scl and scl-pipe (the trainer's autocast per stage, which the
pipeline's stage threads honour). ``--compile`` (default on; ``--no-compile`` skips it): scl and
scl-pipe also run with ``convert(compile=True)`` (fp32, batch 128), and bp with ``torch.compile``.

Timing: ``--warmup`` steps, then ``--rounds`` rounds of ``--steps`` steps; on CUDA each round is
timed with CUDA events (recorded on the caller's stream, the end after a device-wide
synchronize, so every stage stream's work is in), elsewhere with ``perf_counter``; the median
round is reported as samples/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import decouple
from decouple.experiments import available_cores
from decouple.experiments.models import VGG

Batch = tuple[torch.Tensor, torch.Tensor]
MODES = ["bp", "scl", "scl-pipe", "gpipe"]


class Embed(nn.Module):
    def __init__(self, vocab: int, dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(ids) + self.position


class MeanClassifier(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(1))


class TextTransformer(nn.Module):
    """The SCPL paper's IMDB Transformer, smaller: embedding, encoder layers, mean over tokens, FC-tanh-FC."""

    def __init__(self, vocab: int, dim: int, heads: int, tokens: int, layers: int = 3, classes: int = 2) -> None:
        super().__init__()
        self.embed = Embed(vocab, dim, tokens)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True) for _ in range(layers))  # fmt: skip
        self.head = MeanClassifier(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class Bench:
    """One model at one size: its builder, splits, the same cuts as plain modules (for GPipe), and batches."""

    def __init__(self, name: str, tiny: bool) -> None:
        self.name = name
        if name == "vgg":
            self.width, self.size, self.classes = (4, 16, 10) if tiny else (64, 64, 200)
            self.splits = ["block1", "block2", "block3"]
        else:
            self.vocab, self.dim, self.heads, self.tokens = (50, 16, 2, 8) if tiny else (20_000, 256, 4, 128)
            self.classes, self.splits = 2, ["embed", "layers.0", "layers.1"]

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        if self.name == "vgg":
            return VGG(3, self.classes, self.size, self.width)
        return TextTransformer(self.vocab, self.dim, self.heads, self.tokens)

    def parts(self, model: nn.Module) -> list[nn.Module]:
        """The plain model cut where decouple cuts it."""
        m: Any = model
        if self.name == "vgg":
            return [m.block1, m.block2, m.block3, nn.Sequential(m.block4, m.classifier)]
        return [m.embed, m.layers[0], m.layers[1], nn.Sequential(m.layers[2], m.head)]

    def batches(self, batch: int, device: torch.device, count: int = 4) -> list[Batch]:
        g = torch.Generator().manual_seed(1)
        if self.name == "vgg":
            made = [(torch.randn(batch, 3, self.size, self.size, generator=g), torch.randint(0, self.classes, (batch,), generator=g)) for _ in range(count)]  # fmt: skip
        else:
            made = [(torch.randint(0, self.vocab, (batch, self.tokens), generator=g), torch.randint(0, 2, (batch,), generator=g)) for _ in range(count)]  # fmt: skip
        return [(x.to(device), y.to(device)) for x, y in made]


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


# -- modes: each returns a function that trains on ``steps`` batches ---------------------------
def plain_bp(bench: Bench, device: torch.device, precision: str, compiled: bool) -> Callable[[list[Batch]], None]:
    model = bench.model().to(device)
    net: Callable[..., torch.Tensor] = torch.compile(model) if compiled else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run(batches: list[Batch]) -> None:
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

    return run


def decoupled(bench: Bench, device: torch.device, precision: str, compiled: bool, piped: bool, example: torch.Tensor) -> Callable[[list[Batch]], None]:  # fmt: skip
    dm = decouple.convert(bench.model(), method="scl", splits=bench.splits, example_inputs=(example[:2].cpu(),),
                          devices=[device], precision="bf16" if precision == "bf16" else "32", compile=compiled)  # fmt: skip
    if piped:
        cores = torch.get_num_threads()  # what the other modes use (main() sets it on cpu)

        def run_piped(batches: list[Batch]) -> None:
            before = torch.get_num_threads()
            if device.type == "cpu":  # the same cores as the other modes: cores / stages per stage thread
                torch.set_num_threads(max(1, cores // dm.num_stages))
            try:
                with dm.pipeline(depth=2) as pipe:
                    for x, y in batches:
                        pipe.submit(x, target=y)
                    pipe.drain()
            finally:
                torch.set_num_threads(before)

        return run_piped

    def run(batches: list[Batch]) -> None:
        for x, y in batches:
            dm.train_step(x, target=y)

    return run


def gpipe(bench: Bench, device: torch.device, precision: str, microbatches: int) -> Callable[[list[Batch]], None]:
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import ScheduleLoopedBFS

    if not dist.is_initialized():  # one rank holds every stage: they hand tensors on in-process, no communication
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    model = bench.model().to(device)
    parts = bench.parts(model)
    stages = [PipelineStage(p, k, len(parts), device) for k, p in enumerate(parts)]
    schedule = ScheduleLoopedBFS(stages, microbatches, loss_fn=F.cross_entropy)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run(batches: list[Batch]) -> None:
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                schedule.step(x, target=y)
            opt.step()

    return run


def timed(run: Callable[[list[Batch]], None], data: list[Batch], args: argparse.Namespace, device: torch.device) -> list[float]:  # fmt: skip
    """Seconds per round of ``args.steps`` steps, after ``args.warmup`` steps."""
    cycle = lambda n: [data[i % len(data)] for i in range(n)]
    run(cycle(args.warmup))
    rounds = []
    for _ in range(args.rounds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            run(cycle(args.steps))
            torch.cuda.synchronize(device)  # every stream of every stage
            end.record()
            end.synchronize()
            rounds.append(start.elapsed_time(end) / 1000)
        else:
            tic = time.perf_counter()
            run(cycle(args.steps))
            rounds.append(time.perf_counter() - tic)
    return rounds


def measure(bench: Bench, mode: str, batch: int, precision: str, compiled: bool, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    device = torch.device(args.device)
    row: dict[str, Any] = {"model": bench.name, "mode": mode + (" (compile)" if compiled else ""), "batch": batch,
                           "precision": precision}  # fmt: skip
    data = bench.batches(batch, device)
    try:
        if mode == "bp":
            run = plain_bp(bench, device, precision, compiled)
        elif mode == "gpipe":
            run = gpipe(bench, device, precision, args.microbatches)
        else:
            run = decoupled(bench, device, precision, compiled, mode == "scl-pipe", data[0][0])
        rounds = timed(run, data, args, device)
    except NotImplementedError as exc:
        return {**row, "error": str(exc)}
    except Exception as exc:  # one mode failing keeps the others (e.g. GPipe refusing a model)
        return {
            **row,
            "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}",
        }
    seconds = statistics.median(rounds)
    return {**row, "seconds": seconds, "rounds": rounds, "samples_per_s": batch * args.steps / seconds}


def table(rows: list[dict[str, Any]]) -> list[str]:
    """samples/s of bp, and every other mode as a multiple of bp, per model, precision and batch."""
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    out = ["| model | precision | batch | bp samples/s | " + " | ".join(f"{m} x bp" for m in modes[1:]) + " |",
           "| --- | --- | ---: | ---: |" + " ---: |" * (len(modes) - 1)]  # fmt: skip
    keys = list(dict.fromkeys((r["model"], r["precision"], r["batch"]) for r in rows))
    for key in keys:
        got = {r["mode"]: r for r in rows if (r["model"], r["precision"], r["batch"]) == key}
        bp = got.get("bp", {}).get("samples_per_s")
        cells = []
        for m in modes[1:]:
            r = got.get(m)
            if r is None:
                cells.append("")
            elif "error" in r:
                cells.append("n/a")
            else:
                cells.append(f"{r['samples_per_s'] / bp:.2f}" if bp else f"{r['samples_per_s']:.0f}/s")
        shown = f"{bp:,.0f}" if bp else "n/a"
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {shown} | " + " | ".join(cells) + " |")
    notes = sorted({f"{r['mode']} ({r['precision']}): {r['error']}" for r in rows if "error" in r})
    return out + [f"n/a: {n}" for n in notes]


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's target on one GPU: at batch >= 128 the scl pipeline is at least as fast as bp, and ahead of GPipe."""
    lines = []
    rate = {(r["model"], r["precision"], r["batch"], r["mode"]): r.get("samples_per_s") for r in rows}
    for model, precision, batch, mode in rate:
        if mode != "scl-pipe" or batch < 128 or rate[model, precision, batch, mode] is None:
            continue
        pipe, bp, gp = rate[model, precision, batch, mode], rate.get((model, precision, batch, "bp")), rate.get((model, precision, batch, "gpipe"))  # fmt: skip
        verdict = [f"{pipe / bp:.2f}x bp ({'met' if pipe >= bp else 'MISSED'})" if bp else "no bp"]
        verdict.append(f"{pipe / gp:.2f}x gpipe ({'met' if pipe > gp else 'MISSED'})" if gp else "gpipe n/a")
        lines.append(f"{model} {precision} batch {batch}: scl-pipe " + ", ".join(verdict))
    return lines


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["vgg", "transformer"], choices=["vgg", "transformer"])
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default 32 128 512; 4 8 on cpu)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--tiny", action="store_true", help="tiny models (the default on cpu)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--microbatches", type=int, default=4, help="GPipe's micro-batches per batch")
    parser.add_argument("--cores", type=int, default=available_cores(), help="on cpu: the cores every mode uses")
    parser.add_argument("--out", type=Path, help="write speed.json and speed.md here")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also run bp, scl and scl-pipe compiled (fp32, batch 128; default on)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.device == "cuda" and torch.cuda.is_available():
        args.device = f"cuda:{torch.cuda.current_device()}"
    cpu = torch.device(args.device).type == "cpu"
    tiny = args.tiny or cpu
    batches = args.batches or ([4, 8] if cpu else [32, 128, 512])
    before = torch.get_num_threads()
    if cpu:
        torch.set_num_threads(args.cores)
    try:
        return _run(args, cpu, tiny, batches)
    finally:
        torch.set_num_threads(before)


def _run(args: argparse.Namespace, cpu: bool, tiny: bool, batches: list[int]) -> list[dict[str, Any]]:
    compiled = args.compile
    where = f"{args.cores} CPU cores for every mode" if cpu else torch.cuda.get_device_name(args.device)
    print(f"torch {torch.__version__}, {args.device} ({where}), {'tiny' if tiny else 'reduced-paper'} sizes, "
          f"compile {'on' if compiled else 'off (--no-compile)'}", flush=True)  # fmt: skip
    rows = []
    for name in args.models:
        bench = Bench(name, tiny)
        for precision in args.precisions:
            for batch in batches:
                for mode in args.modes:
                    rows.append(measure(bench, mode, batch, precision, False, args))
                    save(rows, args.out)
        middle = 128 if 128 in batches else batches[len(batches) // 2]
        for mode in ("bp", "scl", "scl-pipe") if compiled else ():
            rows.append(measure(bench, mode, middle, "fp32", True, args))
            save(rows, args.out)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # the one-process group gpipe made
        dist.destroy_process_group()
    print("\n".join(save(rows, args.out)))
    return rows


def save(rows: list[dict[str, Any]], out: Path | None) -> list[str]:
    """Print the newest row; write every row so far and the tables (a run cut short keeps what it measured)."""
    print(json.dumps(rows[-1]), flush=True)
    lines = [*table(rows), "", *targets(rows)]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "speed.json").write_text(json.dumps(rows, indent=1))
        (out / "speed.md").write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
