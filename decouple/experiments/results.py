"""Results of a comparison (runs of methods x architectures x seeds): CSV files, the papers' tables, the accuracy-vs-epoch figure.

Tables follow the papers' layout: one row per method (in the order given), one column per
architecture, cells ``mean ± std`` of the final test accuracy over seeds; a ``*`` marks the best
method other than bp in a column and a ``†`` a method above bp, as the papers' bold face and dagger.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from .training import RunResult

__all__ = [
    "Summary",
    "summarize",
    "accuracy_table",
    "parameter_table",
    "write_epochs_csv",
    "read_epochs_csv",
    "write_summary_csv",
    "plot_curves",
]

BASELINE = "bp"


class Summary:
    """Mean and standard deviation of the final test accuracy of one (label, arch) over its seeds."""

    def __init__(self, runs: Sequence[RunResult]) -> None:
        if not runs:
            raise ConfigError("a summary needs at least one run")
        self.runs = list(runs)
        finals = [r.final for r in runs]
        self.mean = statistics.fmean(finals)
        self.std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        self.seconds = statistics.fmean(r.seconds for r in runs)

    def cell(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"


def _ordered(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def summarize(results: Sequence[RunResult]) -> dict[tuple[str, str], Summary]:
    """``{(label, arch): Summary}`` in the order the runs came."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.arch), []).append(r)
    return {key: Summary(runs) for key, runs in groups.items()}


def _markers(summaries: dict[tuple[str, str], Summary], labels: list[str], arch: str) -> dict[str, str]:
    """``*`` for the best label of ``arch`` not trained with bp, ``†`` for labels above the bp label."""
    present = [lb for lb in labels if (lb, arch) in summaries]
    baselines = [lb for lb in present if summaries[(lb, arch)].runs[0].method == BASELINE]
    others = [lb for lb in present if lb not in baselines]
    marks = dict.fromkeys(present, "")
    if len(others) > 1:
        best = max(summaries[(lb, arch)].mean for lb in others)
        for lb in others:
            if summaries[(lb, arch)].mean == best:  # ties share the mark
                marks[lb] += "*"
    if len(baselines) == 1:
        base = summaries[(baselines[0], arch)].mean
        for lb in others:
            if summaries[(lb, arch)].mean > base:
                marks[lb] += "†"
    return marks


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def accuracy_table(results: Sequence[RunResult], titles: dict[str, str] | None = None) -> str:
    """Final test accuracy (%) as ``mean ± std``: rows labels, columns architectures."""
    summaries = summarize(results)
    labels = _ordered([r.label for r in results])
    archs = _ordered([r.arch for r in results])
    marks = {arch: _markers(summaries, labels, arch) for arch in archs}
    rows = []
    for label in labels:
        cells = [
            f"{summaries[(label, a)].cell()}{marks[a].get(label, '')}" if (label, a) in summaries else "-"
            for a in archs
        ]
        rows.append([label, *cells])
    seeds = max(len(s.runs) for s in summaries.values())
    header = ["test accuracy (%)", *[(titles or {}).get(a, a) for a in archs]]
    note = f"mean ± std over {seeds} seed(s); * best method other than bp, † above bp"
    return _grid(header, rows) + "\n" + note


def parameter_table(results: Sequence[RunResult], titles: dict[str, str] | None = None) -> str:
    """Parameters in training vs inference per label and architecture (as the Delog-SCL parameter table)."""
    labels = _ordered([r.label for r in results])
    archs = _ordered([r.arch for r in results])
    first: dict[tuple[str, str], RunResult] = {}
    for r in results:
        first.setdefault((r.label, r.arch), r)
    header = ["parameters"]
    for a in archs:
        header += [f"{(titles or {}).get(a, a)} training", "inference"]
    rows = []
    for label in labels:
        cells = [label]
        for a in archs:
            counts = first[(label, a)].params if (label, a) in first else None
            cells += [f"{counts.training:,}", f"{counts.inference:,}"] if counts is not None else ["-", "-"]
        rows.append(cells)
    return _grid(header, rows)


def write_epochs_csv(results: Sequence[RunResult], path: str | Path) -> Path:
    """One row per run and epoch: arch, label, method, seed, epoch, test and train accuracy, local losses."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "label", "method", "seed", "epoch", "test_accuracy", "train_accuracy", "local_losses"])
        for r in results:
            for e, acc in enumerate(r.test_accuracy):
                train = r.train_accuracy[e] if e < len(r.train_accuracy) else None
                losses = r.losses[e] if e < len(r.losses) else {}
                shown = ";".join(f"{k}={v:.4f}" for k, v in losses.items())
                writer.writerow(
                    [
                        r.arch,
                        r.label,
                        r.method,
                        r.seed,
                        e + 1,
                        f"{acc:.4f}",
                        "" if train is None else f"{train:.4f}",
                        shown,
                    ]
                )
    return path


def read_epochs_csv(path: str | Path) -> list[RunResult]:
    """The runs a :func:`write_epochs_csv` file holds (accuracies and local losses; no times or parameter counts)."""
    runs: dict[tuple[str, str, str, int], RunResult] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            key = (row["arch"], row["label"], row["method"], int(row["seed"]))
            run = runs.setdefault(key, RunResult(arch=key[0], method=key[2], seed=key[3], label=key[1]))
            run.test_accuracy.append(float(row["test_accuracy"]))
            run.train_accuracy.append(float(row["train_accuracy"]) if row["train_accuracy"] else None)
            pairs = [item.split("=") for item in row["local_losses"].split(";") if item]
            run.losses.append({k: float(v) for k, v in pairs})
    return list(runs.values())


def write_summary_csv(results: Sequence[RunResult], path: str | Path) -> Path:
    """One row per (arch, label): mean and std of the final test accuracy, seeds, training seconds, parameters."""
    path = Path(path)
    summaries = summarize(results)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "label", "method", "seeds", "test_accuracy_mean", "test_accuracy_std", "train_seconds_mean",
                         "compute", "training_params", "inference_params", "original_params"])  # fmt: skip
        for (label, arch), s in summaries.items():
            p = s.runs[0].params
            counts = [p.training, p.inference, p.original] if p is not None else ["", "", ""]
            writer.writerow(
                [
                    arch,
                    label,
                    s.runs[0].method,
                    len(s.runs),
                    f"{s.mean:.4f}",
                    f"{s.std:.4f}",
                    f"{s.seconds:.1f}",
                    s.runs[0].compute,
                    *counts,
                ]
            )
    return path


def plot_curves(
    results: Sequence[RunResult], path: str | Path, *, title: str = "", titles: dict[str, str] | None = None
) -> Path:
    """Test accuracy per epoch, a line per label (mean over seeds, shaded ± std), a panel per architecture."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:  # pragma: no cover - matplotlib is an optional dependency
        raise ConfigError("plots need matplotlib: pip install 'torch-decouple[plot]'") from exc
    summaries = summarize(results)
    labels = _ordered([r.label for r in results])
    archs = _ordered([r.arch for r in results])
    fig, axes = plt.subplots(1, len(archs), figsize=(4.6 * len(archs), 3.6), squeeze=False)
    try:
        for ax, arch in zip(axes[0], archs):
            for label in labels:
                if (label, arch) in summaries:
                    _draw_curve(ax, summaries[(label, arch)], label)
            ax.set_title((titles or {}).get(arch, arch))
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(Path(path), dpi=110)
    finally:
        plt.close(fig)
    return Path(path)


def _draw_curve(ax: object, summary: Summary, label: str) -> None:
    epochs = min(len(r.test_accuracy) for r in summary.runs)
    xs = list(range(1, epochs + 1))
    columns = [[100 * r.test_accuracy[e] for r in summary.runs] for e in range(epochs)]
    mean = [statistics.fmean(c) for c in columns]
    std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
    line = ax.plot(xs, mean, marker="o", markersize=3, label=label)[0]  # type: ignore[attr-defined]
    if any(std):
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],  # type: ignore[attr-defined]
                        color=line.get_color(), alpha=0.15)  # fmt: skip
