"""Text classification: the SCPL paper's LSTM and Transformer classifiers, trained with each method.

    python examples/text_classification.py --seeds 0 1 2 --epochs 10 [--models lstm transformer]
                                           [--methods bp early_exit al scl] [--dataset rotten_tomatoes] [--out DIR]

Both models follow the SCPL paper's text setup (appendix A): a word embedding, three
bidirectional LSTM layers or three Transformer encoder layers, and an FC-tanh-FC classifier,
split into four components (embedding | layer 1 | layer 2 | layer 3 + classifier). AL cuts after
the third layer too, so its decoders replace the classifier alone and it trains every layer, as in
the vision examples. The data are bundled (``--dataset``): the Rotten Tomatoes snippets (10,000
train / 2,808 test, 1 = fresh) or AG News titles and descriptions (4 topics); a word-level
vocabulary is built from the training split, as the papers build theirs. ``--val-size`` training
samples are held out for early stopping: the table also reports the test accuracy at the epoch of
best validation accuracy, as the AL paper does.

Every method trains with ``decouple.experiments.TEXT_RECIPES`` (what the local heads read, the
heads, AL's objectives; see the README) unless ``--paper-defaults`` asks for the library's
defaults. Local heads read each component's sequence through the attention mask, which decouple
finds by the ``attention_mask`` argument name and carries across the cuts.

Prints mean ± std over seeds per method and model (final epoch and best validation epoch), the
parameter table and, for AL, the shortcut inference accuracies (``inference_module(exit=l)``, the
AL paper's Table 1); with ``--out DIR`` writes accuracy_per_epoch.csv, summary.csv, runs.json,
tables.md and accuracy_vs_epoch.png there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import decouple
from decouple.errors import ConfigError
from decouple.experiments.datasets import TEXT_DATASETS, text_loaders
from decouple.experiments.results import (
    accuracy_table,
    parameter_table,
    plot_curves,
    write_epochs_csv,
    write_summary_csv,
)
from decouple.experiments.training import TEXT_RECIPES, RunResult, torch_threads
from decouple.objectives.losses import logits_of

METHODS = ("bp", "early_exit", "al", "scl")
TITLES = {"lstm": "LSTM", "transformer": "Transformer"}


def final_state(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A bidirectional LSTM's final state from its outputs: forward at the last real token, backward at the first."""
    positions = torch.arange(1, x.shape[1] + 1, device=x.device)
    last = ((mask != 0).long() * positions).argmax(dim=1)
    hidden = x.shape[-1] // 2
    forward = x[torch.arange(x.shape[0], device=x.device), last, :hidden]
    return torch.cat([forward, x[:, 0, hidden:]], dim=1)


class LSTMClassifier(nn.Module):
    """Embedding, three bidirectional LSTM layers, FC-tanh-FC on the final state.

    ``pass_state`` hands each LSTM's final ``(h, c)`` to the next as its initial state, as SCPL's
    released LSTM does across its cuts (decouple carries the tuple across, detached).
    """

    def __init__(
        self, vocab_size: int, embed_dim: int, hidden: int, num_classes: int = 2, pass_state: bool = False
    ) -> None:
        super().__init__()
        self.pass_state = pass_state
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm1 = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.lstm3 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.classifier = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        x, state = self.lstm1(x)
        x, state = self.lstm2(x, state) if self.pass_state else self.lstm2(x)
        x, _ = self.lstm3(x, state) if self.pass_state else self.lstm3(x)
        return self.classifier(final_state(x, attention_mask))


class Embeddings(nn.Module):
    """Word plus learned position embeddings: the Transformer's first component."""

    def __init__(self, vocab_size: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.words(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))


class TransformerClassifier(nn.Module):
    """Embedding, three Transformer encoder layers (dropout 0.1), masked mean, FC-tanh-FC."""

    def __init__(self, vocab_size: int, dim: int, heads: int, max_len: int, num_classes: int = 2) -> None:
        super().__init__()
        self.embedding = Embeddings(vocab_size, dim, max_len)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, batch_first=True) for _ in range(3)
        )
        self.classifier = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, num_classes))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        padding = attention_mask == 0
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        weights = attention_mask.to(x.dtype).unsqueeze(-1)
        return self.classifier((x * weights).sum(1) / weights.sum(1).clamp(min=1.0))


#: four components; AL cuts after the last layer too (its decoders replace the classifier alone)
SPLITS = {"lstm": ["embedding", "lstm1", "lstm2"], "transformer": ["embedding", "layers.0", "layers.1"]}
AL_SPLITS = {"lstm": [*SPLITS["lstm"], "lstm3"], "transformer": [*SPLITS["transformer"], "layers.2"]}


@dataclass
class Settings:
    """Model and training settings shared by every run of a comparison."""

    dataset: str = "rotten_tomatoes"
    epochs: int = 10
    batch_size: int = 64
    max_len: int = 32
    dim: int = 64
    heads: int = 4
    lr: float = 1e-3
    val_size: int = 1000
    pass_state: bool = False
    train_limit: int | None = None  # the first N training texts (tests, quick looks)
    test_limit: int | None = None


@dataclass
class TextData:
    """Loaders of ``(ids, mask, label)`` batches; ``val`` holds ``val_size`` training samples out (or is None)."""

    name: str
    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    vocab_size: int
    classes: int


@dataclass
class TextRun:
    """One run: the per-epoch record (``result``), validation accuracy per epoch, AL's shortcut accuracies."""

    result: RunResult
    val_accuracy: list[float] = field(default_factory=list)
    shortcuts: dict[int, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def best_epoch(self) -> int:
        """The epoch (1-based) of best validation accuracy (the last epoch without a validation split)."""
        if not self.val_accuracy:
            return len(self.result.test_accuracy)
        return max(range(len(self.val_accuracy)), key=lambda e: (self.val_accuracy[e], -e)) + 1

    @property
    def best_test(self) -> float:
        """Test accuracy at the epoch of best validation accuracy (early stopping)."""
        return self.result.test_accuracy[self.best_epoch - 1]


def load_data(settings: Settings, seed: int) -> TextData:
    """The bundled data set's loaders, with ``val_size`` training samples (a fixed draw) held out."""
    train, test, vocab = text_loaders(
        settings.batch_size, max_len=settings.max_len, seed=seed, dataset=settings.dataset
    )
    dataset = train.dataset
    labels = dataset.tensors[-1]  # type: ignore[attr-defined]
    if settings.train_limit is not None:
        dataset = Subset(dataset, range(min(settings.train_limit, len(dataset))))
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, generator=generator)
    if settings.test_limit is not None:
        test = DataLoader(Subset(test.dataset, range(min(settings.test_limit, len(test.dataset)))), batch_size=256)
    val = None
    if settings.val_size:
        if settings.val_size >= len(dataset) // 2:
            raise ConfigError(f"--val-size {settings.val_size} leaves too few of the {len(dataset)} training samples")
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1234)).tolist()
        generator = torch.Generator().manual_seed(seed)
        kept = Subset(dataset, order[settings.val_size :])
        train = DataLoader(kept, batch_size=settings.batch_size, shuffle=True, generator=generator)
        val = DataLoader(Subset(dataset, order[: settings.val_size]), batch_size=256)
    return TextData(settings.dataset, train, val, test, len(vocab), int(labels.max()) + 1)


def build(kind: str, data: TextData, settings: Settings) -> nn.Module:
    if kind == "lstm":
        return LSTMClassifier(data.vocab_size, settings.dim, settings.dim, data.classes, settings.pass_state)
    if kind == "transformer":
        return TransformerClassifier(data.vocab_size, settings.dim, settings.heads, settings.max_len, data.classes)
    raise ConfigError(f"unknown model {kind!r}; choose from {', '.join(SPLITS)}")


def recipe(kind: str, method: str) -> dict[str, Any]:
    """The method options a text model trains with: ``TEXT_RECIPES[(kind, method)]``."""
    return dict(TEXT_RECIPES.get((kind, method), {}))


def accuracy(module: Callable[..., Any], loader: DataLoader) -> float:
    correct = total = 0
    with torch.no_grad():
        for ids, mask, y in loader:
            correct += int((logits_of(module(ids, mask)).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def train_run(
    kind: str,
    method: str,
    data: TextData,
    settings: Settings,
    seed: int,
    *,
    options: dict[str, Any] | None = None,
    label: str = "",
    progress: bool = False,
    model_factory: Callable[[], nn.Module] | None = None,
) -> TextRun:
    """Train ``kind`` with ``method`` for ``settings.epochs``, testing (and validating) the inference module after each.

    ``options`` are the method options (default: the text recipe); every method of one seed starts
    from the same initial weights (``torch.manual_seed(seed)`` before building) and sees the same batches.
    """
    options = recipe(kind, method) if options is None else dict(options)
    torch.manual_seed(seed)
    model = model_factory() if model_factory is not None else build(kind, data, settings)
    ids, mask, _ = next(iter(data.test))
    torch.manual_seed(seed)  # the local heads' initial weights
    dm = decouple.convert(
        model,
        method=method,
        splits=(AL_SPLITS if method == "al" else SPLITS)[kind],
        example_inputs={"ids": ids[:2], "attention_mask": mask[:2]},
        num_classes=data.classes,
        optimizer=lambda params: torch.optim.Adam(params, lr=settings.lr),
        **options,
    )
    run = TextRun(RunResult(kind, method, seed, label or method, params=dm.param_counts()), options=options)
    torch.manual_seed(seed)  # dropout: the same stream for every method
    seconds = 0.0
    for epoch in range(settings.epochs):
        dm.train()
        tic = time.perf_counter()
        bar = tqdm(data.train, desc=f"{kind:<11} {label or method:<14} seed {seed} epoch {epoch + 1}/{settings.epochs}",
                   leave=False, disable=not progress, mininterval=0.5)  # fmt: skip
        totals: dict[str, float] = {}
        for ids, mask, y in bar:
            losses = dm.train_step(ids, mask, target=y)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v) / len(data.train)
            bar.set_postfix({k.replace("stage", "s"): f"{float(v):.3f}" for k, v in losses.items()})
        seconds += time.perf_counter() - tic
        dm.eval()
        inference = dm.inference_module()
        run.result.test_accuracy.append(accuracy(inference, data.test))
        run.result.losses.append({k: round(v, 4) for k, v in totals.items()})
        if data.val is not None:
            run.val_accuracy.append(accuracy(inference, data.val))
    run.result.seconds = round(seconds, 1)
    if method == "al":
        for exit_at in range(1, dm.num_stages + 1):
            run.shortcuts[exit_at] = accuracy(dm.inference_module(exit=exit_at), data.test)
    return run


def mean_std(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def summary_table(runs: Sequence[TextRun], constant: float | None = None) -> str:
    """Markdown: per model and method, the final and best-validation-epoch test accuracy (mean ± std over seeds)."""
    groups: dict[tuple[str, str], list[TextRun]] = {}
    for r in runs:
        groups.setdefault((r.result.arch, r.result.label), []).append(r)
    lines = [
        "| model | method | seeds | epochs | final test acc. (%) | test acc. at best val. epoch (%) | best epoch "
        "| train s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (arch, label), group in groups.items():
        finals = [r.result.final for r in group]
        best = [r.best_test for r in group]
        epochs = [r.best_epoch for r in group]
        lines.append(
            f"| {TITLES.get(arch, arch)} | {label} | {len(group)} | {len(group[0].result.test_accuracy)} | "
            f"{mean_std(finals)} | {mean_std(best)} | {statistics.fmean(epochs):.1f} | "
            f"{statistics.fmean(r.result.seconds for r in group):.0f} |"
        )
    if constant is not None:
        lines.append(f"\nconstant prediction (majority class of the test split): {100 * constant:.2f}%")
    return "\n".join(lines)


def shortcut_table(runs: Sequence[TextRun]) -> str:
    """AL's inference through each bridge ``b_l`` (``inference_module(exit=l)``): mean ± std over seeds."""
    groups: dict[tuple[str, str], list[TextRun]] = {}
    for r in runs:
        if r.shortcuts:
            groups.setdefault((r.result.arch, r.result.label), []).append(r)
    if not groups:
        return ""
    layers = max(len(r.shortcuts) for g in groups.values() for r in g)
    header = "| model | method | " + " | ".join(f"exit={k}" for k in range(1, layers + 1)) + " |"
    lines = [header, "| --- | --- |" + " ---: |" * layers]
    for (arch, label), group in groups.items():
        exits = range(1, layers + 1)
        cells = [mean_std([r.shortcuts[k] for r in group]) if k in group[0].shortcuts else "-" for k in exits]
        lines.append(f"| {TITLES.get(arch, arch)} | {label} | " + " | ".join(cells) + " |")
    return "AL shortcut inference, test accuracy (%) (the last exit is the full path)\n\n" + "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    parser.add_argument("--models", nargs="+", default=["lstm", "transformer"], choices=sorted(SPLITS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--dataset", default=defaults.dataset, choices=TEXT_DATASETS, help="bundled text data set")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (e.g. 0 1 2)")
    parser.add_argument("--seed", type=int, help="a single seed (same as --seeds SEED)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-len", type=int, default=defaults.max_len, help="tokens kept per text")
    parser.add_argument("--dim", type=int, default=defaults.dim, help="embedding and hidden size")
    parser.add_argument("--heads", type=int, default=defaults.heads, help="attention heads of the Transformer")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--val-size", type=int, default=defaults.val_size,
                        help="training samples held out to pick the best epoch (0: none)")  # fmt: skip
    parser.add_argument("--pass-state", action="store_true", help="each LSTM starts from the previous one's (h, c)")
    parser.add_argument("--train-limit", type=int, help="train on the first N training texts")
    parser.add_argument("--test-limit", type=int, help="test on the first N test texts")
    parser.add_argument("--paper-defaults", action="store_true", help="the library's default options, not TEXT_RECIPES")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="folder for CSV, JSON, tables and the figure")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.seed is not None:
        args.seeds = [args.seed]
    for name in ("epochs", "batch_size", "max_len", "dim", "heads"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def write_outputs(out: Path, runs: Sequence[TextRun], settings: Settings, tables: str, title: str) -> None:
    """accuracy_per_epoch.csv, summary.csv, tables.md, runs.json and accuracy_vs_epoch.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results = [r.result for r in runs]
    write_epochs_csv(results, out / "accuracy_per_epoch.csv")
    write_summary_csv(results, out / "summary.csv")
    (out / "tables.md").write_text(tables + "\n")
    records = [
        {**asdict(r.result), "params": r.result.params.training if r.result.params else None,
         "val_accuracy": r.val_accuracy, "shortcuts": r.shortcuts, "options": r.options}
        for r in runs
    ]  # fmt: skip
    document = {"settings": asdict(settings), "runs": records}
    (out / "runs.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    plot_curves(results, out / "accuracy_vs_epoch.png", titles=TITLES, title=title)
    print(f"\nwrote {out}/: accuracy_per_epoch.csv, summary.csv, tables.md, runs.json, accuracy_vs_epoch.png")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(args.dataset, args.epochs, args.batch_size, args.max_len, args.dim, args.heads, args.lr,
                        args.val_size, args.pass_state, args.train_limit, args.test_limit)  # fmt: skip
    runs: list[TextRun] = []
    with torch_threads(args.threads):
        for seed in args.seeds:
            data = load_data(settings, seed)
            if seed == args.seeds[0]:
                print(f"{data.name}: {len(data.train.dataset)} train / {len(data.val.dataset) if data.val else 0} "
                      f"validation / {len(data.test.dataset)} test texts, {data.classes} classes, vocabulary "
                      f"{data.vocab_size} words from the training split", flush=True)  # fmt: skip
            for kind in args.models:
                for method in args.methods:
                    options = {} if args.paper_defaults else recipe(kind, method)
                    run = train_run(kind, method, data, settings, seed, options=options, progress=not args.quiet)
                    runs.append(run)
                    curve = " ".join(f"{100 * a:.1f}" for a in run.result.test_accuracy)
                    print(f"{kind:<11} {method:<10} seed {seed}  test accuracy per epoch: {curve}  "
                          f"(best val. epoch {run.best_epoch}: {100 * run.best_test:.2f}; {run.result.seconds:.0f}s)",
                          flush=True)  # fmt: skip
    labels = torch.cat([y for _, _, y in data.test])
    constant = float((labels == labels.mode().values).float().mean())
    results = [r.result for r in runs]
    tables = [summary_table(runs, constant), accuracy_table(results, TITLES), parameter_table(results, TITLES)]
    shortcuts = shortcut_table(runs)
    if shortcuts:
        tables.append(shortcuts)
    text = "\n\n".join(tables)
    print(f"\n{data.name}, {settings.epochs} epochs, seeds {' '.join(map(str, args.seeds))}\n\n{text}")
    if args.out is not None:
        write_outputs(args.out, runs, settings, text, f"test accuracy vs epoch on {data.name} "
                      f"(mean ± std over {len(args.seeds)} seeds)")  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except decouple.DecoupleError as exc:
        print(f"text_classification.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
