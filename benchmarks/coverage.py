"""Model coverage runs, shared by the torchvision zoo (``zoo.py``) and the Hugging Face zoo (``hf_zoo.py``).

A *catalog* names the models and builds a :class:`Case` for each (how to build the model, example
inputs, the number of classes). Every (model, method) pair is converted with ``convert(splits=N)``
(balanced cuts among the candidate split points, local heads included), then checked on a batch of 4
(two classes, two samples each):

- ``converts``: ``convert()`` returns (its wall time is ``convert_s``); a ``DecoupleError`` here is a
  *refusal* with a reason (counted apart from failures), any other exception a failure;
- ``isolation``: each stage's local loss has a non-zero gradient on its own parameters only;
- ``inference``: the inference module equals the original in eval mode (``al``, which replaces the
  head by design: it runs and returns ``(batch, classes)``);
- ``state_dict``: after one training step, ``effective_state_dict()`` loads with ``strict=True``
  into the original model object (``al``: into a fresh inference module) and gives the same outputs;
- ``pipeline``: one batch through ``dm.pipeline()`` trains every stage (finite losses).

Each model runs in its own process (a timeout and a memory limit per model, so one slow or huge
model cannot stall the run); rows go to a CSV and a Markdown report.
"""

from __future__ import annotations

import argparse
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

__all__ = ["Case", "Catalog", "Row", "CHECKS", "METHODS", "check_method", "gradient_isolation", "main"]

METHODS = ("scl", "al", "early_exit")
CHECKS = ("converts", "isolation", "inference", "state_dict", "pipeline")
BATCH = 4
STAGES = 4  # convert(splits=4): three cuts, or fewer when the model has fewer candidate points


class Case(Protocol):
    """One model of a catalog: its name, input description, builder, example inputs and classes."""

    name: str
    size: int  # the input side (images) or length (tokens); 0 when unknown

    @property
    def classes(self) -> int: ...

    @property
    def input_kind(self) -> str: ...

    def build(self) -> torch.nn.Module: ...

    def inputs(self, batch: int = BATCH) -> Any: ...


@dataclass(frozen=True)
class Catalog:
    """The models of one coverage run and how to report them."""

    title: str  # "torchvision classifiers"
    script: str  # the script a worker process runs (``--worker NAME``)
    command: str  # how the report says it was made ("python benchmarks/zoo.py")
    setup: str  # a sentence on how models are built and fed
    names: Callable[[], list[str]]  # every model of the catalog
    order: Callable[[list[str]], list[str]]  # the order to run them in (small first)
    case: Callable[[str], Case]  # the case of one model (may raise: the model does not build)
    csv: str
    md: str


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
    refused: bool = False  # convert() raised a DecoupleError: the model cannot work, and says why
    built: bool = True  # False: the catalog could not build the model (listed apart, with the reason)
    kind: str = ""  # the input kind ("32px", "8 tokens")

    @property
    def passed(self) -> bool:
        return all(getattr(self, c) for c in CHECKS)


# -- inputs ---------------------------------------------------------------------------------
def _call(fn: Callable[..., Any], x: Any, **kw: Any) -> Any:
    """``fn(x)`` for a tensor, ``fn(**x)`` for a dict of named inputs."""
    return fn(**x, **kw) if isinstance(x, dict) else fn(x, **kw)


def _rows(x: Any, n: int) -> Any:
    """The first ``n`` samples of the inputs."""
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def _logits(out: Any) -> torch.Tensor:
    from decouple.objectives.losses import logits_of

    logits = logits_of(out)
    if logits is None:
        raise TypeError(f"the model returns {type(out).__name__}, not logits")
    return logits


# -- checks --------------------------------------------------------------------------------
def gradient_isolation(dm: Any, *inputs: Any, target: torch.Tensor, **kw_inputs: Any) -> str | None:
    """``None`` if each stage's local loss has a non-zero gradient on its own parameters only, else why not."""
    stages = list(dm.stages)
    owned = [{id(p) for p in s.parameters() if p.requires_grad} for s in stages]
    params = [p for s in stages for p in s.parameters() if p.requires_grad]
    losses = dm.local_losses(*inputs, target=target, **kw_inputs)
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


def _inference(dm: Any, model: torch.nn.Module, method: str, x: Any, classes: int) -> str | None:
    """The inference module against the original model, both in eval mode."""
    model.eval()
    with torch.no_grad():
        got = _logits(_call(dm.inference_module(), x))
        if method == "al":
            batch = _logits(_call(model, x)).shape[0]
            return None if tuple(got.shape) == (batch, classes) else f"al inference returns {tuple(got.shape)}"
        return _same(got, _logits(_call(model, x)))


def _round_trip(dm: Any, model: torch.nn.Module, method: str, x: Any) -> str | None:
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
        return _same(_logits(_call(target, x)), _logits(_call(infer, x)))


def _pipeline(dm: Any, x: Any, y: torch.Tensor) -> str | None:
    steps = dm.steps
    with dm.pipeline() as pipe:
        _call(pipe.submit, x, target=y)
        stats = pipe.drain()
    if dm.steps != steps + 1 or stats.batches != 1:
        return f"one submitted batch trained {dm.steps - steps} steps"
    bad = {k: v for k, v in stats.losses.items() if not math.isfinite(v)}
    return f"non-finite losses {bad}" if bad else None


def check_method(case: Case, method: str, model: torch.nn.Module | None = None, dynamic_sizes: str = "all") -> Row:
    """Convert ``case``'s model with ``method`` and run every check; failures are recorded, not raised."""
    import decouple
    from decouple.compiler.candidates import candidate_splits

    start = time.perf_counter()
    torch.manual_seed(0)
    model = case.build() if model is None else model
    x = case.inputs()
    y = torch.arange(BATCH) % 2  # two classes, two samples each: positives for SupCon
    row = Row(case.name, method, case.size, sum(p.numel() for p in model.parameters()) / 1e6, kind=case.input_kind)
    step = "converts"
    try:
        t0 = time.perf_counter()
        dm = _convert(model, method, _rows(x, 2), case.classes, dynamic_sizes=dynamic_sizes)
        row.convert_s = time.perf_counter() - t0
        row.converts, row.stages = True, dm.num_stages
        part = dm.program.partitions[True]
        row.candidates = len(candidate_splits(part.trace, dm.program.root, several=True))
        row.splits = " ".join(dm.balance.splits) if dm.balance is not None else ""
        checks: list[tuple[str, Callable[[], str | None]]] = [
            ("inference", lambda: _inference(dm, model, method, x, case.classes)),
            ("isolation", lambda: _call(lambda *a, **k: gradient_isolation(dm.train(), *a, **k), x, target=y)),
            ("state_dict", lambda: (_call(dm.train_step, x, target=y), _round_trip(dm, model, method, x))[1]),
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
    except decouple.DecoupleError as exc:
        row.failed.append(step)
        row.refused = step == "converts"
        row.error += f"{step}: {_describe(exc)}"
    except Exception as exc:
        row.failed.append(step)
        row.error += f"{step}: {_describe(exc)}"
    row.total_s = time.perf_counter() - start
    row.peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def _convert(model: torch.nn.Module, method: str, example: Any, classes: int, **kwargs: Any) -> Any:
    """``convert(splits=STAGES)``, or fewer stages when the model has fewer candidate split points."""
    import decouple

    example_inputs = example if isinstance(example, dict) else (example,)
    for stages in range(STAGES, 1, -1):
        try:
            return decouple.convert(
                model, method=method, splits=stages, example_inputs=example_inputs, num_classes=classes, **kwargs
            )
        except decouple.SplitError as exc:
            if stages == 2 or ("split points but" not in str(exc) and "segments between" not in str(exc)):
                raise
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/decouple/" in f.filename]
    where = f" [{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}]" if frames else ""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}{where}"


# -- worker process ------------------------------------------------------------------------
def _worker(
    catalog: Catalog, name: str, methods: Sequence[str], out: str, threads: int, max_gib: float, dynamic_sizes: str
) -> None:
    """Run one model's methods in this process, appending one JSON row per method to ``out``."""
    limit = int(max_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    torch.set_num_threads(threads)
    try:
        case = catalog.case(name)
    except Exception as exc:
        for method in methods:
            _append(out, Row(name, method, error=f"build: {_describe(exc)}", failed=["converts"], built=False))
        return
    for method in methods:
        row = check_method(case, method, dynamic_sizes=dynamic_sizes)
        _append(out, row)
        gc.collect()


def _append(path: str, row: Row) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(dataclasses.asdict(row)) + "\n")


def run_model(
    catalog: Catalog,
    name: str,
    methods: Sequence[str],
    *,
    timeout: float,
    threads: int,
    max_gib: float,
    dynamic_sizes: str = "all",
) -> list[Row]:
    """One model in a child process; methods it did not finish in time are rows with the reason."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        cmd = [sys.executable, catalog.script, "--worker", name, "--methods", *methods, "--out", out.name,
               "--threads", str(threads), "--max-gib", str(max_gib), "--dynamic-sizes", dynamic_sizes]  # fmt: skip
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
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


# -- command line --------------------------------------------------------------------------
def main(catalog: Catalog, doc: str, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", help="model names (default: every model of the catalog)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=["scl", "al", "early_exit", "bp"])
    parser.add_argument("--jobs", type=int, default=1, help="models at once (each in its own process)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model, all methods together")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per model process")
    parser.add_argument("--max-gib", type=float, default=16.0, help="memory limit per model process (GiB)")
    parser.add_argument(
        "--dynamic-sizes",
        default="all",
        choices=("all", "batch", "none"),
        help="convert(dynamic_sizes=...): which input sizes a torch.export trace keeps dynamic (default: all)",
    )
    parser.add_argument("--csv", default=catalog.csv)
    parser.add_argument("--md", default=catalog.md)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the models of --csv that pass every check (or are refused); run the others (missing or failing)",
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
        _worker(catalog, args.worker, args.methods, args.out, args.threads, args.max_gib, args.dynamic_sizes)
        return 0

    from benchmarks.coverage_report import markdown, read_csv, write_csv

    if args.merge is not None:
        merged = {(r.model, r.method): r for path in args.merge for r in read_csv(path)}
        rows = sorted(merged.values(), key=lambda r: (r.model, METHODS.index(r.method) if r.method in METHODS else 9))
        write_csv(rows, args.csv)
        with open(args.md, "w") as f:
            f.write(markdown(rows, [m for m in METHODS if any(r.method == m for r in rows)], catalog.command, catalog))
        return 0
    every = catalog.names()
    names = args.models or every
    unknown = sorted(set(names) - set(every))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(every[:20])}, ...")
    rows: list[Row] = read_csv(args.csv) if args.resume and os.path.exists(args.csv) else []
    failing = {r.model for r in rows if not (r.passed or r.refused) or r.method not in args.methods}
    rows = [r for r in rows if r.model not in failing or r.model not in names]
    done = {r.model for r in rows}
    todo = catalog.order([n for n in names if n not in done])  # small models first: a cut-short run covers the most
    command = f"{catalog.command} " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"
    )

    def one(name: str) -> list[Row]:
        return run_model(catalog, name, args.methods, timeout=args.timeout, threads=args.threads, max_gib=args.max_gib,
                         dynamic_sizes=args.dynamic_sizes)  # fmt: skip

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for name, result in zip(todo, pool.map(one, todo)):
            rows += result
            for r in result:
                status = "ok" if r.passed else ("REFUSED " if r.refused else "FAIL ") + r.error[:200]
                print(f"{name:28s} {r.method:10s} {r.total_s:7.1f}s  {status}", flush=True)
            rows.sort(key=lambda r: (r.model, args.methods.index(r.method) if r.method in args.methods else 9))
            write_csv(rows, args.csv)
            with open(args.md, "w") as f:
                f.write(markdown(rows, args.methods, command.strip(), catalog))
    passed = sum(r.passed for r in rows)
    refused = sum(r.refused for r in rows)
    print(f"{passed}/{len(rows)} model/method pairs pass every check, {refused} refused with a reason, "
          f"{len(rows) - passed - refused} failed")  # fmt: skip
    return 0
