"""Pipeline throughput with and without a bound on concurrent backward passes (``backward_slots``).

    python benchmarks/backward_slots.py                     # vit_b_16, batch 16 x 224, 2 rounds
    python benchmarks/backward_slots.py --model resnet50    # batch 48 x 160 (any model of memory.py)

The depth-2 ``scl`` pipeline over four stages (the models, batches and splits of ``benchmarks/memory.py``) trains the
same batch with ``backward_slots`` unlimited (``None``), 2 (what ``"auto"`` gives a CPU) and 1, interleaved (each round runs every setting
once), after a warm-up; the median images/s per setting and its ratio to unlimited are printed.
``benchmarks/memory.py --modes pipe-d2-snone pipe-d2-s2 pipe-d2-s1`` measures what each costs in memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import decouple

try:
    from memory import MODELS  # run as a script: benchmarks/ is on sys.path
except ImportError:
    from benchmarks.memory import MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_b_16", choices=sorted(MODELS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8, help="batches per setting and round")
    args = parser.parse_args()
    spec = MODELS[args.model]
    size, batch = spec.size, spec.batch
    torch.manual_seed(0)
    dm = decouple.convert(spec.build(size), "scl", spec.splits, (torch.randn(2, 3, size, size),))
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

    def rate(slots: int | None, batches: int) -> float:
        start = time.perf_counter()
        with dm.pipeline(depth=2, backward_slots=slots) as pipe:
            for _ in range(batches):
                pipe.submit(x, target=y)
            pipe.drain()
        return batches * batch / (time.perf_counter() - start)

    settings: list[int | None] = [None, 2, 1]
    for slots in settings:
        rate(slots, 3)  # warm-up
    rates: dict[int | None, list[float]] = {s: [] for s in settings}
    for _ in range(args.rounds):
        for slots in settings:
            rates[slots].append(rate(slots, args.batches))
    print(f"{args.model}, batch {batch} x {size}, {dm.num_stages} stages, depth 2, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")  # fmt: skip
    base = statistics.median(rates[None])
    for slots, values in rates.items():
        median = statistics.median(values)
        label = "unlimited" if slots is None else f"{slots} slot{'s' if slots > 1 else ''}"
        print(f"{label:>10}: {median:6.2f} images/s ({median / base:.2f}x unlimited)  rounds: "
              f"{', '.join(f'{v:.2f}' for v in values)}")  # fmt: skip


if __name__ == "__main__":
    main()
