"""The cross-batch pipeline schedule, as pure functions: which (batch, stage) tasks may overlap.

Stage ``k`` trains on batch ``b`` once stage ``k - 1`` has handed on batch ``b`` and stage ``k``
itself has finished batch ``b - 1`` (it must see the parameters of exactly the same updates as
in sequential training). The threaded runtime enforces this by construction (one worker per
stage, FIFO queues); these functions state it so the schedule can be tested against literal
lists and a recorded timeline can be checked against it.

Index letters: ``m`` number of batches, ``n`` number of stages, ``b`` batch, ``k`` stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["clock_cycles", "dependencies", "schedule_violations", "ideal_ticks"]


def clock_cycles(m: int, n: int) -> Iterator[list[tuple[int, int]]]:
    """The ideal schedule: at tick ``t`` every ``(b, k)`` with ``b + k == t`` runs at once.

    >>> list(clock_cycles(3, 2))
    [[(0, 0)], [(1, 0), (0, 1)], [(2, 0), (1, 1)], [(2, 1)]]
    """
    for t in range(m + n - 1):
        yield [(t - k, k) for k in range(max(0, t - m + 1), min(n, t + 1))]


def ideal_ticks(m: int, n: int) -> int:
    """Ticks the ideal schedule takes: ``m + n - 1`` (fill, steady state, drain)."""
    return m + n - 1 if m > 0 else 0


def dependencies(b: int, k: int) -> list[tuple[int, int]]:
    """The tasks ``(b, k)`` waits for: the same batch one stage earlier, the batch before on this stage."""
    deps = []
    if k > 0:
        deps.append((b, k - 1))
    if b > 0:
        deps.append((b - 1, k))
    return deps


def schedule_violations(spans: Iterable[tuple[int, int, float, float]]) -> list[str]:
    """Check recorded ``(batch, stage, start, end)`` spans against :func:`dependencies`.

    Returns one line per task that started before a task it depends on had ended (empty when
    the run respected the schedule).
    """
    table = {(b, k): (start, end) for b, k, start, end in spans}
    problems = []
    for (b, k), (start, _) in sorted(table.items()):
        for dep in dependencies(b, k):
            if dep in table and start < table[dep][1]:
                problems.append(
                    f"batch {b} on stage {k} started at {start:.6f}s before batch {dep[0]} on stage {dep[1]} ended at {table[dep][1]:.6f}s"
                )
    return problems
