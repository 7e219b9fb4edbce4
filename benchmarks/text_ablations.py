"""Issue 17 ablations: why local objectives lagged on the text models, and what the text recipes are.

    python benchmarks/text_ablations.py run pool state heads al training   # groups, in order; resumable
    python benchmarks/text_ablations.py report                             # tables -> stdout (markdown)

Every run trains one model with one method on the bundled Rotten Tomatoes snippets through
``examples/text_classification.py``'s ``train_run`` (same data, models and loop as the example),
with one torch thread, and appends a JSON line to ``benchmarks/results/text_ablations/runs.jsonl``
(a run already there is skipped). Settings are the example's (batch 64, 32 tokens, width 64,
Adam 1e-3 constant, 1,000 training snippets held out for validation) unless a variant says otherwise.

What a local head reads (group ``pool``) is varied with a pool module factory: stage 0 (the
embedding) reads ``emb``, the LSTM stages read ``rnn``:

- emb: ``last`` (the embedding of the last real token: what ``pool="final_state"`` read there before
  the fix), ``mean`` (masked mean), ``first``;
- rnn: ``hn`` (``h_n`` of both directions: what ``final_state`` read before the fix; its forward half
  has read the padding), ``hn_avg`` (``(h_n[0] + h_n[1]) / 2``, SCPL's released code), ``final``
  (each direction where it finished the real tokens: the fixed ``final_state``), ``final_avg``
  (the two directions of ``final`` averaged), ``mean`` (masked mean over tokens), ``first`` (token 0).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from decouple.experiments import RECIPES
from decouple.objectives.pools import first_valid_index, last_valid_index
from decouple.tree import first_tensor

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "text_ablations" / "runs.jsonl"


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("text_classification", ROOT / "examples" / "text_classification.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["text_classification"] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()


class ReadPool(nn.Module):
    """A stage's local representation, as one of the variants in the module docstring."""

    reads_mask = True

    def __init__(self, read: str, recurrent: bool) -> None:
        super().__init__()
        self.read = read
        self.recurrent = recurrent

    def forward(self, x: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
        seq = first_tensor(x)
        n, t = seq.shape[:2]
        rows = torch.arange(n, device=seq.device)
        if mask is None:
            mask = torch.ones(n, t, dtype=torch.bool, device=seq.device)
        if self.read == "mean":
            w = mask.to(seq.dtype).unsqueeze(-1)
            return (seq * w).sum(1) / w.sum(1).clamp(min=1.0)
        if self.read == "first":
            return seq[:, 0]
        if self.read == "last":
            return seq[rows, last_valid_index(mask)]
        hidden = seq.shape[-1] // 2
        if self.read in ("hn", "hn_avg"):
            if isinstance(x, (tuple, list)):
                h = x[1][0] if isinstance(x[1], (tuple, list)) else x[1]
                forward, backward = h[-2], h[-1]
            else:  # output_dim's meta example: the sequence alone (same states as h_n)
                forward, backward = seq[:, -1, :hidden], seq[:, 0, hidden:]
        elif self.read in ("final", "final_avg"):
            forward = seq[rows, last_valid_index(mask), :hidden]
            backward = seq[rows, first_valid_index(mask), hidden:]
        else:
            raise ValueError(self.read)
        if self.read.endswith("_avg"):
            return (forward + backward) / 2
        return torch.cat([forward, backward], dim=1)

    def extra_repr(self) -> str:
        return f"read={self.read!r}, recurrent={self.recurrent}"


def read_pool(emb: str, rnn: str) -> Callable[[], nn.Module]:
    """A pool factory: the passes build one pool per stage in order, stage 0 (the embedding) first."""
    built = [0]

    def factory() -> nn.Module:
        k = built[0]
        built[0] += 1
        return ReadPool(emb if k == 0 else rnn, k > 0)

    return factory


@dataclass
class Variant:
    group: str
    label: str
    model: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    pool: tuple[str, str] | None = None  # (emb, rnn) read variants
    epochs: int = 5

    def key(self, seed: int) -> str:
        """Runs with the same settings and seed share a key whatever their epochs: with a constant learning rate
        the first E epochs of a longer run are the E-epoch run (same batches, same dropout draws)."""
        blob = json.dumps([self.model, self.method, self.options, self.settings, self.pool, seed], sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


AL = dict(RECIPES["al"])  # first_loss=ce, target_grad=False, bridge_width=1024
SEEDS = (0, 1, 2)


FINAL_EPOCHS = 10


def groups() -> dict[str, list[Variant]]:
    """Variants per group, in the order they run; the final configurations (the text recipes) run 10 epochs."""
    g: dict[str, list[Variant]] = {}
    lstm_pool = ("mean", "final")  # the fixed pool="final_state" (masked mean on the embedding stage)
    # the final configurations: every method on both models with the text recipes, 10 epochs
    g["final"] = [
        Variant("final", "bp", "lstm", "bp", epochs=FINAL_EPOCHS),
        Variant("final", "scl", "lstm", "scl", pool=lstm_pool, epochs=FINAL_EPOCHS),
        Variant("final", "al", "lstm", "al", dict(AL), pool=lstm_pool, epochs=FINAL_EPOCHS),
        Variant("final", "bp", "transformer", "bp", epochs=FINAL_EPOCHS),
        Variant("final", "scl", "transformer", "scl", epochs=FINAL_EPOCHS),
        Variant("final", "al", "transformer", "al", dict(AL), epochs=FINAL_EPOCHS),
    ]
    g["final_ee"] = [
        Variant("final_ee", "early_exit", "lstm", "early_exit", pool=lstm_pool, epochs=FINAL_EPOCHS),
        Variant("final_ee", "early_exit", "transformer", "early_exit", epochs=FINAL_EPOCHS),
    ]
    # what the local objective reads (LSTM)
    pool = [Variant("pool", "bp", "lstm", "bp")]
    for emb, rnn in [("last", "hn"), ("mean", "final"), ("last", "final"), ("mean", "hn"), ("mean", "final_avg"),
                     ("mean", "hn_avg"), ("mean", "mean")]:  # fmt: skip
        pool.append(Variant("pool", f"scl emb={emb} rnn={rnn}", "lstm", "scl", pool=(emb, rnn)))
    for emb, rnn in [("last", "hn"), ("mean", "final"), ("mean", "mean")]:
        pool.append(Variant("pool", f"al (recipe) emb={emb} rnn={rnn}", "lstm", "al", dict(AL), pool=(emb, rnn)))
    g["pool"] = pool
    # AL on sequences: the library defaults (2022 paper) vs the recipe
    g["al"] = [
        Variant("al", label, model, "al", opts, pool=lstm_pool if model == "lstm" else None)
        for model in ("lstm", "transformer")
        for label, opts in [("al paper defaults", {}), ("al recipe", dict(AL))]
    ]
    # heads: projector and temperature
    heads = [Variant("heads", "bp", "transformer", "bp")]
    for model in ("lstm", "transformer"):
        pool_ = lstm_pool if model == "lstm" else None
        heads += [
            Variant("heads", "scl mlp t=0.1", model, "scl", {}, pool=pool_),
            Variant("heads", "scl identity t=0.1", model, "scl", {"head": "identity"}, pool=pool_),
            Variant("heads", "scl mlp t=0.5", model, "scl", {"temperature": 0.5}, pool=pool_),
        ]
    g["heads"] = heads
    # SCPL's (h, c) hand-over between the LSTMs (a model-definition choice)
    g["state"] = [
        Variant("state", f"{m}{suffix}", "lstm", m, dict(AL) if m == "al" else {}, settings,
                pool=None if m == "bp" else lstm_pool)
        for suffix, settings in [("", {}), (" pass_state", {"pass_state": True})]
        for m in ("bp", "scl", "al")
    ]  # fmt: skip
    # more AL: label_dim, a linear bridge (LSTM)
    g["al_more"] = [
        Variant("al_more", "al recipe", "lstm", "al", dict(AL), pool=lstm_pool),
        Variant("al_more", "al recipe, label_dim 512", "lstm", "al", {**AL, "label_dim": 512}, pool=lstm_pool),
        Variant("al_more", "al recipe, linear bridge", "lstm", "al", {**AL, "bridge_width": None}, pool=lstm_pool),
    ]
    # batch size and learning rate (LSTM): SCPL trains text with large batches
    g["training"] = [
        Variant("training", f"{m}{label}", "lstm", m, dict(AL) if m == "al" else {}, settings,
                pool=None if m == "bp" else lstm_pool)
        for label, settings in [(", batch 256", {"batch_size": 256}),
                                (", batch 256, lr 3e-3", {"batch_size": 256, "lr": 3e-3})]
        for m in ("bp", "scl", "al")
    ]  # fmt: skip
    return g


def records() -> dict[str, dict[str, Any]]:
    """Every run so far by key (the longest run of a key)."""
    found: dict[str, dict[str, Any]] = {}
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r["key"] not in found or r["epochs"] > found[r["key"]]["epochs"]:
                    found[r["key"]] = r
    return found


def run_variant(v: Variant, seed: int) -> dict[str, Any]:
    settings = replace(example.Settings(), epochs=v.epochs, **v.settings)
    data = example.load_data(settings, seed)
    options = dict(v.options)
    if v.pool is not None:
        options["pool"] = read_pool(*v.pool)
    tic = time.perf_counter()
    run = example.train_run(v.model, v.method, data, settings, seed, options=options, label=v.label)
    return {
        "key": v.key(seed), "group": v.group, "label": v.label, "model": v.model, "method": v.method,
        "seed": seed, "epochs": v.epochs, "options": dict(v.options), "pool": v.pool,
        "settings": asdict(settings), "test_accuracy": run.result.test_accuracy, "val_accuracy": run.val_accuracy,
        "losses": run.result.losses, "shortcuts": run.shortcuts, "train_seconds": run.result.seconds,
        "wall_seconds": round(time.perf_counter() - tic, 1),
        "params_training": run.result.params.training, "params_inference": run.result.params.inference,
    }  # fmt: skip


def run_groups(names: list[str], seeds: list[int], only: str | None) -> None:
    torch.set_num_threads(1)
    table = groups()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        for v in table[name]:
            if only and only not in v.label:
                continue
            for seed in seeds:
                done = records().get(v.key(seed))
                if done is not None and done["epochs"] >= v.epochs:
                    continue
                record = run_variant(v, seed)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                curve = " ".join(f"{100 * a:.1f}" for a in record["test_accuracy"])
                print(f"[{name}] {v.model} {v.label} seed {seed}: {curve} ({record['wall_seconds']:.0f}s)", flush=True)


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def report(seeds: list[int], epochs: int | None) -> str:
    """Markdown tables, one per group: a row per variant, at ``epochs`` (default: the variant's own)."""
    by_key = records()
    out = []
    for name, variants in groups().items():
        rows = []
        for v in variants:
            at = epochs or v.epochs
            rs = [r for s in seeds if (r := by_key.get(v.key(s))) is not None and r["epochs"] >= at]
            rows.append((v, at, rs))
        if not any(rs for _, _, rs in rows):
            continue
        out.append(f"### {name}\n")
        out.append("| model | variant | seeds | epochs | test acc. (%) | at best val. epoch (%) | best epoch | "
                   "mean local losses in that epoch (seed 0) |")  # fmt: skip
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for v, at, rs in rows:
            if not rs:
                continue
            finals = [r["test_accuracy"][at - 1] for r in rs]
            best_epochs = [max(range(at), key=lambda e, r=r: (r["val_accuracy"][e], -e)) for r in rs]
            best = [r["test_accuracy"][e] for r, e in zip(rs, best_epochs)]
            losses = ", ".join(f"{k.replace('stage', 's')}={val:.2f}" for k, val in rs[0]["losses"][at - 1].items())
            out.append(f"| {v.model} | {v.label} | {len(rs)} | {at} | {_cell(finals)} | {_cell(best)} | "
                       f"{statistics.fmean(best_epochs) + 1:.1f} | {losses} |")  # fmt: skip
            if rs[0]["shortcuts"] and rs[0]["epochs"] == at:
                cells = ", ".join(f"exit {k}: {_cell([r['shortcuts'][k] for r in rs])}" for k in rs[0]["shortcuts"])
                out.append(f"| | ↳ AL shortcuts | | | {cells} | | | |")
        out.append("")
    return "\n".join(out)


def export_final(out: Path, seeds: list[int]) -> str:
    """The final configurations as the example reports them (tables, CSV, PNG, runs.json) from the recorded runs.

    The runs are ``train_run`` calls with the example's settings and ``TEXT_RECIPES`` (the pool factory
    ``read_pool("mean", "final")`` is ``pool="final_state"``, checked equal loss for loss), so
    ``examples/text_classification.py --seeds 0 1 2 --epochs 10`` prints the same numbers.
    """
    by_key = records()
    runs = []
    data = None
    for v in groups()["final"] + groups()["final_ee"]:
        for seed in seeds:
            r = by_key.get(v.key(seed))
            if r is None or r["epochs"] < v.epochs:
                continue
            settings = replace(example.Settings(), epochs=v.epochs, **v.settings)
            if data is None:
                data = example.load_data(settings, seed)
            torch.manual_seed(seed)
            model = example.build(v.model, data, settings)
            ids, mask, _ = next(iter(data.test))
            options = example.recipe(v.model, v.method)
            splits = (example.AL_SPLITS if v.method == "al" else example.SPLITS)[v.model]
            dm = example.decouple.convert(model, v.method, splits, {"ids": ids[:2], "attention_mask": mask[:2]},
                                          num_classes=data.classes, **options)  # fmt: skip
            result = example.RunResult(v.model, v.method, seed, v.label, test_accuracy=r["test_accuracy"],
                                       losses=r["losses"], seconds=r["train_seconds"],
                                       params=dm.param_counts())  # fmt: skip
            shortcuts = {int(k): acc for k, acc in r["shortcuts"].items()}
            runs.append(example.TextRun(result, r["val_accuracy"], shortcuts, options))
    assert data is not None, "no final runs recorded yet"
    labels = torch.cat([y for _, _, y in data.test])
    constant = float((labels == labels.mode().values).float().mean())
    results = [r.result for r in runs]
    tables = [example.summary_table(runs, constant), example.accuracy_table(results, example.TITLES),
              example.parameter_table(results, example.TITLES), example.shortcut_table(runs)]  # fmt: skip
    text = "\n\n".join(t for t in tables if t)
    title = f"test accuracy vs epoch on rotten_tomatoes (mean ± std over {len(seeds)} seeds)"
    example.write_outputs(out, runs, example.Settings(epochs=FINAL_EPOCHS), text, title)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "report", "list", "export"))
    parser.add_argument("groups", nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--epochs", type=int, help="report: the accuracy at this epoch (default: each variant's)")
    parser.add_argument("--only", help="run only variants whose label contains this")
    args = parser.parse_args()
    if args.command == "run":
        run_groups(args.groups or list(groups()), args.seeds, args.only)
    elif args.command == "list":
        for name, vs in groups().items():
            print(name, len(vs), [f"{v.model}:{v.label}" for v in vs])
    elif args.command == "export":
        print(export_final(ROOT / "benchmarks" / "results" / "text_classification_10ep", args.seeds))
    else:
        print(report(args.seeds, args.epochs))


if __name__ == "__main__":
    main()
