"""Text classification: the SCPL paper's LSTM and Transformer classifiers, trained with each method.

    python examples/text_classification.py [--epochs 1] [--models lstm transformer]
                                           [--methods bp early_exit al scl] [--seed 0] [--out DIR]

Both models follow the SCPL paper's text setup (appendix A): a word embedding, three
bidirectional LSTM layers or three Transformer encoder layers, and an FC-tanh-FC classifier,
split into four components (embedding | layer 1 | layer 2 | layer 3 + classifier). The data are
the Rotten Tomatoes review snippets shipped with decouple (10,000 train / 2,808 test, 1 = fresh),
with a word-level vocabulary built from the training split, as the papers build theirs.

Local heads read each component's sequence through the attention mask, which decouple finds by
the ``attention_mask`` argument name and carries across the cuts: a masked mean over tokens
for the Transformer (the AL paper's mean pooling) and the final hidden state for the LSTM (the
AL paper's ``s_i``).

Prints a progress bar per run and a results table; with ``--out DIR`` also writes
``DIR/results.json`` and ``DIR/results.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import decouple
from decouple.experiments.datasets import text_loaders
from decouple.objectives.losses import logits_of

METHODS = ("bp", "early_exit", "al", "scl")


def final_state(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A bidirectional LSTM's final state from its outputs: forward at the last real token, backward at the first."""
    positions = torch.arange(1, x.shape[1] + 1, device=x.device)
    last = ((mask != 0).long() * positions).argmax(dim=1)
    hidden = x.shape[-1] // 2
    forward = x[torch.arange(x.shape[0], device=x.device), last, :hidden]
    return torch.cat([forward, x[:, 0, hidden:]], dim=1)


class LSTMClassifier(nn.Module):
    """Embedding, three bidirectional LSTM layers, FC-tanh-FC on the final state."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, num_classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm1 = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.lstm3 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.classifier = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        x, _ = self.lstm1(x)
        x, _ = self.lstm2(x)
        x, _ = self.lstm3(x)
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


SPLITS = {"lstm": ["embedding", "lstm1", "lstm2"], "transformer": ["embedding", "layers.0", "layers.1"]}


@dataclass
class Result:
    model: str
    method: str
    stages: int
    epochs: int
    seconds: float
    test_accuracy: float
    final_losses: dict[str, float]


def build(kind: str, vocab_size: int, args: argparse.Namespace) -> nn.Module:
    if kind == "lstm":
        return LSTMClassifier(vocab_size, args.dim, args.dim)
    return TransformerClassifier(vocab_size, args.dim, args.heads, args.max_len)


def method_options(method: str, kind: str) -> dict[str, Any]:
    """Options per method: the LSTM's heads read its final state (AL's s_i); others the masked mean."""
    fields = decouple.METHODS[method].options.__dataclass_fields__
    options: dict[str, Any] = {}
    if "pool" in fields and kind == "lstm":
        options["pool"] = "final_state"
    return options


def accuracy(module: nn.Module, loader: Any) -> float:
    correct = total = 0
    with torch.no_grad():
        for ids, mask, y in loader:
            correct += int((logits_of(module(ids, mask)).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def run(kind: str, method: str, loaders: tuple[Any, Any, Any], args: argparse.Namespace) -> Result:
    train, test, vocab = loaders
    torch.manual_seed(args.seed)
    model = build(kind, len(vocab), args)
    ids, mask, _ = next(iter(test))
    dm = decouple.convert(
        model,
        method=method,
        splits=SPLITS[kind],
        example_inputs={"ids": ids[:2], "attention_mask": mask[:2]},
        num_classes=2,
        optimizer=lambda params: torch.optim.Adam(params, lr=args.lr),
        **method_options(method, kind),
    )
    start = time.perf_counter()
    losses: dict[str, float] = {}
    for epoch in range(args.epochs):
        dm.train()
        bar = tqdm(train, desc=f"{kind:<11} {method:<10} epoch {epoch + 1}/{args.epochs}", leave=False,
                   disable=args.quiet, mininterval=0.5)  # fmt: skip
        for ids, mask, y in bar:
            losses = dm.train_step(ids, mask, target=y)
            bar.set_postfix({k.replace("stage", "s"): f"{v:.3f}" for k, v in losses.items()})
    seconds = time.perf_counter() - start
    dm.eval()
    acc = accuracy(dm.inference_module(), test)
    return Result(kind, method, dm.num_stages, args.epochs, round(seconds, 1), round(acc, 4), losses)


def table(results: list[Result]) -> str:
    lines = ["| model | method | stages | epochs | train s | test accuracy |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.model} | {r.method} | {r.stages} | {r.epochs} | {r.seconds:.1f} | {r.test_accuracy:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lstm", "transformer"], choices=sorted(SPLITS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=32, help="tokens kept per snippet")
    parser.add_argument("--dim", type=int, default=64, help="embedding and hidden size")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of the Transformer")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory for results.json and results.md")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    loaders = text_loaders(args.batch_size, max_len=args.max_len, seed=args.seed)
    print(f"Rotten Tomatoes: {len(loaders[0].dataset)} train / {len(loaders[1].dataset)} test snippets, "
          f"vocabulary {len(loaders[2])} words from the training split")  # fmt: skip
    results = []
    for kind in args.models:
        for method in args.methods:
            result = run(kind, method, loaders, args)
            print(f"{kind:<11} {method:<10} test accuracy {result.test_accuracy:.4f}  ({result.seconds:.1f}s)")
            results.append(result)
    print()
    print(table(results))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        (args.out / "results.md").write_text(table(results) + "\n")
        print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
