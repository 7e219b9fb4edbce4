"""Model coverage: convert every torchvision classifier with every decoupled method and check the result.

    python benchmarks/zoo.py                                   # every model, scl / al / early_exit
    python benchmarks/zoo.py --models resnet18 vit_b_16 --methods scl --timeout 600 --jobs 1

For each model (``weights=None``, ``num_classes=10``, the smallest input it accepts) and method,
``convert(splits=N)`` picks the split points among the candidates (balanced, local heads
included), then the checks run on a batch of 4 (two classes, two samples each):

- ``converts``: ``convert()`` returns (its wall time is ``convert_s``);
- ``isolation``: each stage's local loss has a non-zero gradient on its own parameters only;
- ``inference``: the inference module equals the original in eval mode (``al``, which replaces the
  head by design: it runs and returns ``(batch, classes)``);
- ``state_dict``: after one training step, ``effective_state_dict()`` loads with ``strict=True``
  into the original model object (``al``: into a fresh inference module) and gives the same outputs;
- ``pipeline``: one batch through ``dm.pipeline()`` trains every stage (finite losses).

Each model runs in its own process (a timeout and a memory limit per model, so one slow or huge
model cannot stall the run); rows go to ``benchmarks/zoo.csv`` and ``benchmarks/zoo.md``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "ModelCase",
    "Row",
    "CHECKS",
    "model_case",
    "check_method",
    "gradient_isolation",
    "all_models",
    "by_size",
    "main",
]

METHODS = ("scl", "al", "early_exit")
CHECKS = ("converts", "isolation", "inference", "state_dict", "pipeline")
BATCH = 4
NUM_CLASSES = 10
STAGES = 4  # convert(splits=4): three cuts, or fewer when the model has fewer candidate points
#: input sizes tried in turn; the first the model accepts in eval mode is used
SIZES = (32, 64, 75, 96, 128, 160, 192, 224, 299)
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class ModelCase:
    """How to build one torchvision model and feed it: builder keyword arguments and input side."""

    name: str
    kwargs: dict[str, Any]
    size: int

    def build(self) -> torch.nn.Module:
        import torchvision

        return torchvision.models.get_model(self.name, **self.kwargs)

    def inputs(self, batch: int = BATCH) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch, 3, self.size, self.size, generator=g)


@dataclass
class Row:
    """One model converted with one method: the checks that passed, timings and what failed."""

    model: str
    method: str
    size: int = 0
    params_m: float = 0.0
    candidates: int = 0
    stages: int = 0
    splits: str = ""
    converts: bool = False
    isolation: bool = False
    inference: bool = False
    state_dict: bool = False
    pipeline: bool = False
    convert_s: float = math.nan
    total_s: float = math.nan
    peak_rss_gib: float = math.nan
    error: str = ""
    failed: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(getattr(self, c) for c in CHECKS)


def all_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def by_size(names: Sequence[str]) -> list[str]:
    """``names`` from the fewest parameters to the most (built on the meta device: no memory, no init)."""
    import torchvision

    def params(name: str) -> int:
        try:
            with torch.device("meta"):
                model = torchvision.models.get_model(name, **_builder_kwargs(name))
        except Exception:  # a builder that computes on tensors (regnet's widths): build it for real
            model = torchvision.models.get_model(name, **_builder_kwargs(name))
        return sum(p.numel() for p in model.parameters())

    return sorted(names, key=lambda n: (params(n), n))


def _builder_kwargs(name: str) -> dict[str, Any]:
    """``weights=None, num_classes=10``, and an image size for models that fix one at construction."""
    kwargs: dict[str, Any] = {"weights": None, "num_classes": NUM_CLASSES}
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        kwargs["image_size"] = 2 * patch  # a 2 x 2 grid of patches
    return kwargs


def model_case(name: str) -> ModelCase:
    """The model's builder arguments and the smallest input side (from :data:`SIZES`) it runs on."""
    kwargs = _builder_kwargs(name)
    if "image_size" in kwargs:
        return ModelCase(name, kwargs, kwargs["image_size"])
    model = ModelCase(name, kwargs, 0).build()
    for size in SIZES:
        try:  # both modes: auxiliary heads run in training mode only (inception_v3's needs 75 px and more)
            with torch.no_grad():
                model.eval()(torch.zeros(1, 3, size, size))
                model.train()(torch.randn(2, 3, size, size))
        except Exception:  # too small for this architecture: try the next size
            continue
        return ModelCase(name, kwargs, size)
    raise RuntimeError(f"{name} runs on none of the input sizes {SIZES}")


# -- checks --------------------------------------------------------------------------------
def gradient_isolation(dm: Any, *inputs: Any, target: torch.Tensor) -> str | None:
    """``None`` if each stage's local loss has a non-zero gradient on its own parameters only, else why not."""
    stages = list(dm.stages)
    owned = [{id(p) for p in s.parameters() if p.requires_grad} for s in stages]
    params = [p for s in stages for p in s.parameters() if p.requires_grad]
    losses = dm.local_losses(*inputs, target=target)
    with_objective = [s.index for s in stages if s.objective is not None]
    if len(losses) != len(with_objective):
        return f"{len(losses)} local losses for {len(with_objective)} stages with an objective"
    for k, loss in zip(with_objective, losses):
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        touched = {id(p) for p, g in zip(params, grads) if g is not None and bool(g.abs().sum() > 0)}
        if touched - owned[k]:
            return f"stage {k}'s loss reaches parameters of other stages"
        if not touched & owned[k]:
            return f"stage {k}'s loss reaches none of its own parameters"
    return None


def _same(a: torch.Tensor, b: torch.Tensor) -> str | None:
    try:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    except AssertionError as exc:
        return str(exc).splitlines()[0] + " " + " ".join(str(exc).split("\n")[1:3])
    return None


def _inference(dm: Any, model: torch.nn.Module, method: str, x: torch.Tensor) -> str | None:
    """The inference module against the original model, both in eval mode."""
    model.eval()
    with torch.no_grad():
        got = dm.inference_module()(x)
        if method == "al":
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return None if shape == (x.shape[0], NUM_CLASSES) else f"al inference returns {shape}"
        return _same(got, model(x))


def _round_trip(dm: Any, model: torch.nn.Module, method: str, x: torch.Tensor) -> str | None:
    """``effective_state_dict()`` loads strictly into a model outside ``dm`` and reproduces its outputs."""
    weights = dm.effective_state_dict()
    infer = dm.inference_module()
    target = dm.inference_module() if method == "al" else model
    if method == "al":
        with torch.no_grad():
            for p in target.parameters():
                p.add_(1.0)  # a different state, so loading must overwrite it
    target.load_state_dict(weights, strict=True)
    target.eval()
    with torch.no_grad():
        return _same(target(x), infer(x))


def _pipeline(dm: Any, x: torch.Tensor, y: torch.Tensor) -> str | None:
    steps = dm.steps
    with dm.pipeline() as pipe:
        pipe.submit(x, target=y)
        stats = pipe.drain()
    if dm.steps != steps + 1 or stats.batches != 1:
        return f"one submitted batch trained {dm.steps - steps} steps"
    bad = {k: v for k, v in stats.losses.items() if not math.isfinite(v)}
    return f"non-finite losses {bad}" if bad else None


def check_method(case: ModelCase, method: str, model: torch.nn.Module | None = None) -> Row:
    """Convert ``case``'s model with ``method`` and run every check; failures are recorded, not raised."""
    from decouple.compiler.candidates import candidate_splits

    start = time.perf_counter()
    torch.manual_seed(0)
    model = case.build() if model is None else model
    x = case.inputs()
    y = torch.arange(BATCH) % 2  # two classes, two samples each: positives for SupCon
    row = Row(case.name, method, case.size, sum(p.numel() for p in model.parameters()) / 1e6)
    step = "converts"
    try:
        t0 = time.perf_counter()
        dm = _convert(model, method, x[:2])
        row.convert_s = time.perf_counter() - t0
        row.converts, row.stages = True, dm.num_stages
        row.candidates = len(candidate_splits(dm.program.partitions[True].trace, dm.program.root))
        row.splits = " ".join(dm.balance.splits) if dm.balance is not None else ""
        checks: list[tuple[str, Callable[[], str | None]]] = [
            ("inference", lambda: _inference(dm, model, method, x)),
            ("isolation", lambda: gradient_isolation(dm.train(), x, target=y)),
            ("state_dict", lambda: (dm.train_step(x, target=y), _round_trip(dm, model, method, x))[1]),
            ("pipeline", lambda: _pipeline(dm.train(), x, y)),
        ]
        for step, check in checks:
            try:
                why = check()
            except Exception as exc:
                why = _describe(exc)
            setattr(row, step, why is None)
            if why is not None:
                row.failed.append(step)
                row.error += f"{step}: {why}; "
    except Exception as exc:
        row.failed.append(step)
        row.error += f"{step}: {_describe(exc)}"
    row.total_s = time.perf_counter() - start
    row.peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def _convert(model: torch.nn.Module, method: str, example: torch.Tensor) -> Any:
    """``convert(splits=STAGES)``, or fewer stages when the model has fewer candidate split points."""
    import decouple

    for stages in range(STAGES, 1, -1):
        try:
            return decouple.convert(
                model, method=method, splits=stages, example_inputs=(example,), num_classes=NUM_CLASSES
            )
        except decouple.SplitError as exc:
            if stages == 2 or ("split points but" not in str(exc) and "segments between" not in str(exc)):
                raise
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/decouple/" in f.filename]
    where = f" [{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}]" if frames else ""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{where}"


# -- worker process ------------------------------------------------------------------------
def _worker(name: str, methods: Sequence[str], out: str, threads: int, max_gib: float) -> None:
    """Run one model's methods in this process, appending one JSON row per method to ``out``."""
    limit = int(max_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    torch.set_num_threads(threads)
    try:
        case = model_case(name)
    except Exception as exc:
        for method in methods:
            _append(out, Row(name, method, error=f"build: {_describe(exc)}", failed=["converts"]))
        return
    for method in methods:
        row = check_method(case, method)
        _append(out, row)
        gc.collect()


def _append(path: str, row: Row) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(dataclasses.asdict(row)) + "\n")


def run_model(name: str, methods: Sequence[str], *, timeout: float, threads: int, max_gib: float) -> list[Row]:
    """One model in a child process; methods it did not finish in time are rows with the reason."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--methods", *methods, "--out", out.name,
               "--threads", str(threads), "--max-gib", str(max_gib)]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
        why = ""
        try:
            proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = " ".join(proc.stderr.strip().splitlines()[-1:])[:300]
                why = f"worker exited with status {proc.returncode} ({_signal_name(proc.returncode)}): {tail}"
                if any(sign in proc.stderr for sign in _OUT_OF_MEMORY):
                    why = f"out of memory: needs more than the {max_gib:g} GiB limit per model here ({tail})"
        except subprocess.TimeoutExpired:
            why = f"timeout: more than {timeout:.0f} s on this machine"
        with open(out.name) as results:
            rows = [Row(**json.loads(line)) for line in results if line.strip()]
    done = {r.method for r in rows}
    rows += [Row(name, m, error=why or "no result", failed=["converts"]) for m in methods if m not in done]
    return rows


#: what a worker prints when it hits the memory limit (thread stacks count against it too)
_OUT_OF_MEMORY = (
    "Thread creation failed",
    "MemoryError",
    "DefaultCPUAllocator: can't allocate memory",
    "Cannot allocate memory",
)


def _signal_name(code: int) -> str:
    if code == -9:
        return "killed: out of memory?"
    if code < 0:
        return f"signal {-code}"
    return "error"


# -- reports -------------------------------------------------------------------------------
CSV_FIELDS = ["model", "method", "size", "params_m", "candidates", "stages", "splits", *CHECKS, "convert_s",
              "total_s", "peak_rss_gib", "error"]  # fmt: skip


def write_csv(rows: Sequence[Row], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            d = dataclasses.asdict(r)
            writer.writerow({k: (f"{d[k]:.2f}" if isinstance(d[k], float) else d[k]) for k in CSV_FIELDS})


def read_csv(path: str) -> list[Row]:
    rows = []
    with open(path, newline="") as f:
        for d in csv.DictReader(f):
            values: dict[str, Any] = dict(d)
            for k in CHECKS:
                values[k] = values[k] == "True"
            for k in ("size", "candidates", "stages"):
                values[k] = int(values[k])
            for k in ("params_m", "convert_s", "total_s", "peak_rss_gib"):
                values[k] = float(values[k])
            values["failed"] = [k for k in CHECKS if not values[k]] if values["error"] else []
            rows.append(Row(**values))
    return rows


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def markdown(rows: Sequence[Row], methods: Sequence[str], command: str) -> str:
    """The report: pass rates per check and method, one line per model, and every failure's cause."""
    models = sorted({r.model for r in rows})
    by = {(r.model, r.method): r for r in rows}
    lines = [
        "# Model coverage: torchvision classifiers",
        "",
        f"Generated by `{command}` (torch {torch.__version__}).",
        "",
        f"Each model is built with `weights=None, num_classes={NUM_CLASSES}` and fed {BATCH} images of the smallest "
        "side it accepts; `convert(splits=N)` picks N - 1 balanced cuts among the candidate split points "
        f"(N = {STAGES}, or fewer when the model has fewer candidates). Checks: **converts**; gradient "
        "**isolation** (each local loss reaches its own stage's parameters only); **inference** module equals the "
        "original in eval mode (al: runs, returns `(batch, classes)`); **state_dict**: after a training step "
        "`effective_state_dict()` loads strictly outside the converted model and reproduces its outputs; one "
        "**pipeline** step. `convert s` includes tracing both modes and balancing.",
        "",
        "## Pass rates",
        "",
        "| method | models | " + " | ".join(CHECKS) + " | all |",
        "| --- | ---: | " + " | ".join("---:" for _ in CHECKS) + " | ---: |",
    ]
    for m in methods:
        mine = [by[(name, m)] for name in models if (name, m) in by]
        rates = [f"{sum(getattr(r, c) for r in mine)}/{len(mine)}" for c in CHECKS]
        lines.append(f"| {m} | {len(mine)} | " + " | ".join(rates) + f" | {sum(r.passed for r in mine)}/{len(mine)} |")
    lines += ["", "## Models", "",
              "Per method: the five checks in order (" + ", ".join(CHECKS) + ") and the conversion time.", "",
              "| model | input | params (M) | candidates | " + " | ".join(methods) + " |",
              "| --- | ---: | ---: | ---: | " + " | ".join("---" for _ in methods) + " |"]  # fmt: skip
    for name in models:
        first = next(by[(name, m)] for m in methods if (name, m) in by)
        cells = []
        for m in methods:
            r = by.get((name, m))
            if r is None:
                cells.append("")
                continue
            secs = f" {r.convert_s:.1f}s" if math.isfinite(r.convert_s) else ""
            cells.append("".join(_mark(getattr(r, c)) for c in CHECKS) + secs)
        size = f"{first.size}px" if first.size else "?"
        lines.append(f"| {name} | {size} | {first.params_m:.1f} | {first.candidates} | " + " | ".join(cells) + " |")
    failures = [r for r in rows if not r.passed]
    lines += ["", "## Failures", ""]
    if not failures:
        lines.append("None: every model passes every check with every method.")
    for r in sorted(failures, key=lambda r: (r.model, r.method)):
        lines.append(f"- **{r.model}** / {r.method}: {r.error.strip().rstrip(';')}")
    return "\n".join(lines) + "\n"


# -- command line --------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", help="model names (default: every torchvision classifier)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=["scl", "al", "early_exit", "bp"])
    parser.add_argument("--jobs", type=int, default=1, help="models at once (each in its own process)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model, all methods together")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per model process")
    parser.add_argument("--max-gib", type=float, default=16.0, help="memory limit per model process (GiB)")
    parser.add_argument("--csv", default=os.path.join(HERE, "zoo.csv"))
    parser.add_argument("--md", default=os.path.join(HERE, "zoo.md"))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the models of --csv that pass every check; run the others (missing or failing)",
    )
    parser.add_argument(
        "--merge",
        nargs="*",
        metavar="CSV",
        help="only rewrite --csv and --md from these result files (later files win), running nothing",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.methods, args.out, args.threads, args.max_gib)
        return 0

    if args.merge is not None:
        merged = {(r.model, r.method): r for path in args.merge for r in read_csv(path)}
        rows = sorted(merged.values(), key=lambda r: (r.model, METHODS.index(r.method) if r.method in METHODS else 9))
        write_csv(rows, args.csv)
        with open(args.md, "w") as f:
            f.write(
                markdown(rows, [m for m in METHODS if any(r.method == m for r in rows)], "python benchmarks/zoo.py")
            )
        return 0
    names = args.models or all_models()
    unknown = sorted(set(names) - set(all_models()))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; see torchvision.models.list_models()")
    rows: list[Row] = read_csv(args.csv) if args.resume and os.path.exists(args.csv) else []
    failing = {r.model for r in rows if not r.passed or r.method not in args.methods}
    rows = [r for r in rows if r.model not in failing or r.model not in names]
    done = {r.model for r in rows}
    todo = by_size([n for n in names if n not in done])  # small models first: a cut-short run covers the most
    command = "python benchmarks/zoo.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"
    )
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str) -> list[Row]:
        return run_model(name, args.methods, timeout=args.timeout, threads=args.threads, max_gib=args.max_gib)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for name, result in zip(todo, pool.map(one, todo)):
            rows += result
            for r in result:
                status = "ok" if r.passed else "FAIL " + r.error[:200]
                print(f"{name:22s} {r.method:10s} {r.total_s:7.1f}s  {status}", flush=True)
            rows.sort(key=lambda r: (r.model, args.methods.index(r.method) if r.method in args.methods else 9))
            write_csv(rows, args.csv)
            with open(args.md, "w") as f:
                f.write(markdown(rows, args.methods, command.strip()))
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)}/{len(rows)} model/method pairs pass every check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
