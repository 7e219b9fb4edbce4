"""The one cut chooser: pick the split points that minimise the costliest stage.

Pure functions over :class:`Segment` records (the model between two candidate cuts: its
component's cost and the cost of the local head at its end, which the stage ending there trains
too). :func:`choose_cuts` is a dynamic program over (stages so far, last cut), exact for the
min-max objective; ties go to the earliest cuts. ``convert(..., splits=N)`` and ``decouple splits
--stages N`` both reach it through :func:`decouple.balance.balance_splits`.

Index letters: ``m`` segments, ``i`` a segment (it ends at candidate cut ``i``), ``j`` a stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Segment", "Balance", "stage_costs", "choose_cuts"]


@dataclass(frozen=True)
class Segment:
    """The model between two candidate cuts: its component's cost and the cost of the head at its end."""

    cut: str | None  # the candidate it ends at (None for the last segment)
    component: float
    head: float


@dataclass(frozen=True)
class Balance:
    """The result of balancing: the chosen splits and each stage's share of the total cost."""

    kind: str
    splits: list[str]
    shares: list[float]

    def describe(self) -> str:
        shares = ", ".join(f"{s:.0%}" for s in self.shares)
        return f"splits balanced by {self.kind} (components and local heads): cost share per stage {shares}"


def stage_costs(segments: Sequence[Segment], cuts: Sequence[int]) -> list[float]:
    """Cost of each stage when cutting after segments ``cuts``: its components plus the head at its end."""
    costs, start = [], 0
    for i in [*cuts, len(segments) - 1]:
        costs.append(
            sum(s.component for s in segments[start : i + 1]) + (segments[i].head if i < len(segments) - 1 else 0.0)
        )
        start = i + 1
    return costs


def choose_cuts(segments: Sequence[Segment], num_stages: int) -> list[int]:
    """Indices of ``num_stages - 1`` cuts (segment ``i`` ends at cut ``i``) minimising the costliest stage.

    Dynamic programming over (stages so far, last cut); ties go to the earliest cuts.
    """
    m = len(segments)
    assert 2 <= num_stages <= m, "needs one segment per stage"
    prefix = [0.0]
    for s in segments:
        prefix.append(prefix[-1] + s.component)

    def cost(h: int, i: int) -> float:  # a stage from segment h + 1 through i, ending at cut i
        return prefix[i + 1] - prefix[h + 1] + segments[i].head

    inf = float("inf")
    best = [[inf] * m for _ in range(num_stages)]
    back = [[-1] * m for _ in range(num_stages)]
    for i in range(m - 1):
        best[1][i] = cost(-1, i)
    for j in range(2, num_stages):
        for i in range(j - 1, m - 1):
            for h in range(j - 2, i):
                value = max(best[j - 1][h], cost(h, i))
                if value < best[j][i]:
                    best[j][i], back[j][i] = value, h
    finals = [
        (max(best[num_stages - 1][i], prefix[m] - prefix[i + 1]), i)
        for i in range(m - 1)
        if best[num_stages - 1][i] < inf
    ]
    _, i = min(finals)
    cuts = [i]
    for j in range(num_stages - 1, 1, -1):
        i = back[j][i]
        cuts.append(i)
    return sorted(cuts)
