"""Parameter accounting: effective vs affiliated parameters per stage, training vs inference totals.

*Effective* parameters are those the inference module keeps (the components, and for associated
learning the decoders and the last bridge); *affiliated* parameters exist only to train (local
heads, the other bridges and encoders, exit classifiers). Counts are of unique tensors, so
weights registered under two names count once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["StageCounts", "ParamCounts", "count", "format_table"]


def count(params: Iterable[torch.Tensor]) -> int:
    """Number of elements in the unique tensors of ``params``."""
    seen: dict[int, int] = {}
    for p in params:
        seen.setdefault(id(p), p.numel())
    return sum(seen.values())


@dataclass
class StageCounts:
    index: int
    modules: list[str]
    effective: int
    affiliated: int
    device: str = "cpu"
    cost_share: float | None = None  # share of the balancing cost (FLOPs or time), when known

    @property
    def training(self) -> int:
        return self.effective + self.affiliated


@dataclass
class ParamCounts:
    """What ``DecoupledModel.param_counts()`` returns.

    ``original``: parameters of the user's model. ``training``: every parameter trained (all
    stages, effective + affiliated). ``inference``: parameters of the inference module.
    ``dropped``: parameters of the original model that the method replaces (AL's head).
    """

    method: str
    stages: list[StageCounts]
    original: int
    inference: int
    dropped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def effective(self) -> int:
        return sum(s.effective for s in self.stages)

    @property
    def affiliated(self) -> int:
        return sum(s.affiliated for s in self.stages)

    @property
    def training(self) -> int:
        return self.effective + self.affiliated

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for s, d in zip(self.stages, data["stages"]):
            d["training"] = s.training
        data.update(effective=self.effective, affiliated=self.affiliated, training=self.training)
        return data

    def __str__(self) -> str:
        return format_table(self)


def format_table(counts: ParamCounts) -> str:
    """A plain-text table of the counts, with thousands separators."""
    rows = [("stage", "modules", "effective", "affiliated", "training")]
    for s in counts.stages:
        mods = ", ".join(s.modules)
        if len(mods) > 40:
            mods = mods[:37] + "..."
        rows.append((str(s.index), mods, f"{s.effective:,}", f"{s.affiliated:,}", f"{s.training:,}"))
    rows.append(("total", "", f"{counts.effective:,}", f"{counts.affiliated:,}", f"{counts.training:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for j, r in enumerate(rows):
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [r[i].rjust(widths[i]) for i in range(2, 5)]
        lines.append("  ".join(cells))
        if j == 0 or j == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        f"method {counts.method}: training {counts.training:,} | inference {counts.inference:,} | "
        f"original model {counts.original:,}"
        + (f" | replaced by the method {counts.dropped:,}" if counts.dropped else "")
    )
    lines.extend(counts.notes)
    return "\n".join(lines)
