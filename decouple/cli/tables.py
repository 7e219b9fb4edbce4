"""Tables for the command line (rich): the stages of a conversion, candidate split points, exported files.

Numbers use thousands separators and never wrap; the boxes are plain (columns separated by
spaces) so the output also reads well in logs and pipes. When stdout is not a terminal the
width is fixed generously, so nothing is cropped.
"""

from __future__ import annotations

import os
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from ..inspection import ConversionReport, SplitsReport

__all__ = ["console", "conversion_tables", "splits_tables", "export_table", "percent"]


def console(file: TextIO | None = None) -> Console:
    """A console writing to ``file`` (stdout); 160 columns or more when not a terminal."""
    probe = Console(file=file)
    width = None if probe.is_terminal else max(160, int(os.environ.get("COLUMNS", "0") or 0))
    return Console(file=file, width=width, highlight=False, soft_wrap=False)


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _table(title: str | None = None) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)


def conversion_tables(report: ConversionReport) -> list[Any]:
    """The stage table and the totals table of ``decouple inspect``."""
    summary = f" ({report.method_summary})" if report.method_summary else ""
    stages = _table(
        f"{report.model} · method {report.method}{summary} · {len(report.stages)} stages · "
        f"splits {', '.join(report.splits)}"
    )
    stages.add_column("stage", justify="right", no_wrap=True)
    stages.add_column("modules", overflow="fold")
    stages.add_column("inputs", overflow="fold")
    stages.add_column("outputs", overflow="fold")
    stages.add_column("objective", overflow="fold")
    for name in ("effective", "affiliated", "training", "FLOPs"):
        stages.add_column(name, justify="right", no_wrap=True)
    show_cost = any(s.cost_share is not None for s in report.stages)
    if show_cost:
        stages.add_column("cost", justify="right", no_wrap=True)
    for s in report.stages:
        cells = [
            str(s.index),
            ", ".join(s.modules) or "-",
            "\n".join(str(b) for b in s.inputs) or "-",
            "\n".join(str(b) for b in s.outputs) or "-",
            s.objective or "-",
            f"{s.effective:,}",
            f"{s.affiliated:,}",
            f"{s.training:,}",
            percent(s.flops_share),
        ]
        stages.add_row(*cells, *([percent(s.cost_share)] if show_cost else []))
    stages.add_row(
        "total",
        "",
        "",
        "",
        "",
        f"{report.effective:,}",
        f"{report.affiliated:,}",
        f"{report.training:,}",
        "",
        *([""] if show_cost else []),
        style="bold",
    )

    totals = _table("parameters")
    totals.add_column("", no_wrap=True)
    totals.add_column("count", justify="right", no_wrap=True)
    totals.add_column("vs original", justify="right", no_wrap=True)
    rows = [("training", report.training), ("inference", report.inference), ("original model", report.original)]
    if report.dropped:
        rows.append(("replaced by the method", report.dropped))
    for label, value in rows:
        totals.add_row(label, f"{value:,}", f"{value / report.original:.2f}x" if report.original else "-")
    return [stages, totals, *report.notes]


def splits_tables(report: SplitsReport) -> list[Any]:
    """The candidate table of ``decouple splits`` and, for ``--stages``, the suggested set."""
    several = sum(1 for c in report.candidates if c.crossing)
    single = len(report.candidates) - several
    kinds = (
        f"one tensor crosses {single}; several cross the {several} listed after them"
        if several
        else "one tensor crosses each"
    )
    table = _table(f"{report.model} · {len(report.candidates)} candidate split points ({kinds})")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("split after", overflow="fold")
    table.add_column("crossing tensor", no_wrap=True)
    table.add_column("params before", justify="right", no_wrap=True)
    table.add_column("FLOPs before", justify="right", no_wrap=True)
    suggested = set(report.suggested or ())
    for i, c in enumerate(report.candidates):
        name = c.name + (f" (= {', '.join(c.aliases)})" if c.aliases else "")
        style = "bold" if c.name in suggested else None
        crossing = str(c.shape) + (f" + several: {', '.join(c.crossing)}" if c.crossing else "")
        table.add_row(str(i), name, crossing, percent(c.params_share), percent(c.flops_share), style=style)
    out: list[Any] = [table]
    if report.suggested is not None and report.stage_shares is not None:
        shares = ", ".join(percent(s) for s in report.stage_shares)
        out.append(
            f"suggested for {report.stages} stages (what convert(..., splits={report.stages}) picks for {report.method}, "
            f"by {report.balance} with local heads): --splits {','.join(report.suggested)}"
        )
        out.append(f"{report.balance} share per stage: {shares}")
    if not report.candidates:
        out.append("no module call leaves one tensor, or a few, crossing; give fx node names to --splits instead")
    return out


def export_table(result: Any) -> Table:
    """The files ``decouple export`` wrote."""
    table = _table(f"exported to {result.directory}")
    table.add_column("file", no_wrap=True)
    table.add_column("weights", no_wrap=True)
    table.add_column("class", no_wrap=True)
    table.add_column("what", overflow="fold")
    table.add_column("parameters", justify="right", no_wrap=True)
    for f in result.files:
        what = {"inference": "inference module", "stage": f"stage {f.stage} (training graph)",
                "stage_eval": f"stage {f.stage} (eval graph)", "heads": f"stage {f.stage} local objective's modules"}[f.role]  # fmt: skip
        table.add_row(f.source, f.weights, f.class_name, what, f"{f.parameters:,}")
    return table
