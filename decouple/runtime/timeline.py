"""Timelines of training runs: when each stage ran each phase of each batch, and a Gantt chart of them.

Times are host wall-clock seconds from the run's start (``time.perf_counter``). On CUDA the
recorder synchronises the stage's stream at the end of every phase, so a bar covers the device
work and not just its launch; that costs speed, so record only to look, not to benchmark.
The chart follows the SCPL paper's figures 3 and 4: one row per stage (and its device), time
to the right, a colour per phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from .schedule import schedule_violations

__all__ = ["PHASES", "Event", "Recorder", "Timeline"]

#: the phases a stage records per batch, in the order it runs them ("copy" only when values moved)
PHASES = ("copy", "forward", "loss", "backward", "step")

_COLOURS = {"copy": "#9e9e9e", "forward": "#4c78a8", "loss": "#f58518", "backward": "#54a24b", "step": "#e45756"}


@dataclass(frozen=True)
class Event:
    """One phase of one batch on one stage, in seconds from the start of the run."""

    stage: int
    batch: int
    phase: str
    start: float
    end: float
    device: str

    @property
    def duration(self) -> float:
        return self.end - self.start


class _Span:
    """The context manager :meth:`Recorder.phase` returns; appends an :class:`Event` on exit."""

    __slots__ = ("batch", "phase", "recorder", "start")

    def __init__(self, recorder: Recorder, batch: int, phase: str) -> None:
        self.recorder, self.batch, self.phase, self.start = recorder, batch, phase, 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        rec = self.recorder
        if kind is None and rec.sync is not None:
            rec.sync()
        rec.events.append(
            Event(
                rec.stage, self.batch, self.phase, self.start - rec.origin, time.perf_counter() - rec.origin, rec.device
            )
        )


class _Nothing:
    """The context manager of a recorder that is off."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        return None


_NOTHING = _Nothing()


class Recorder:
    """Collects one stage's events; used by that stage's worker thread only."""

    def __init__(self, stage: int, device: torch.device, origin: float, *, enabled: bool = True) -> None:
        self.stage = stage
        self.device = str(device)
        self.origin = origin
        self.enabled = enabled
        self.events: list[Event] = []
        self.sync: Callable[[], None] | None = None
        if enabled and device.type == "cuda":
            self.sync = lambda: torch.cuda.current_stream(device).synchronize()

    def phase(self, batch: int, name: str) -> _Span | _Nothing:
        """``with recorder.phase(b, "forward"): ...`` records the block (nothing when disabled)."""
        assert name in PHASES, f"unknown phase {name!r}"
        return _Span(self, batch, name) if self.enabled else _NOTHING


@dataclass
class Timeline:
    """The events of one recorded run, ordered by start time; ``devices[k]`` is stage ``k``'s device."""

    events: list[Event]
    devices: list[str] = field(default_factory=list)

    @classmethod
    def merge(cls, recorders: Sequence[Recorder]) -> Timeline:
        events = sorted((e for r in recorders for e in r.events), key=lambda e: (e.start, e.stage, e.batch))
        return cls(events, [r.device for r in recorders])

    @property
    def num_stages(self) -> int:
        return len(self.devices)

    @property
    def span(self) -> float:
        """Seconds from the first event's start to the last event's end."""
        if not self.events:
            return 0.0
        return max(e.end for e in self.events) - min(e.start for e in self.events)

    def stage_events(self, k: int) -> list[Event]:
        return [e for e in self.events if e.stage == k]

    def busy(self) -> list[float]:
        """Seconds each stage spent in recorded phases."""
        return [sum(e.duration for e in self.stage_events(k)) for k in range(self.num_stages)]

    def utilization(self) -> list[float]:
        """Share of the span each stage was busy (1.0 = never idle)."""
        span = self.span or 1.0
        return [b / span for b in self.busy()]

    def batch_spans(self) -> list[tuple[int, int, float, float]]:
        """``(batch, stage, start, end)`` of each batch's work on each stage, in that order."""
        spans: dict[tuple[int, int], tuple[float, float]] = {}
        for e in self.events:
            start, end = spans.get((e.batch, e.stage), (e.start, e.end))
            spans[(e.batch, e.stage)] = (min(start, e.start), max(end, e.end))
        return [(b, k, s, t) for (b, k), (s, t) in sorted(spans.items())]

    def violations(self) -> list[str]:
        """Where the run broke the pipeline schedule (a bug if not empty); see :mod:`.schedule`."""
        return schedule_violations(self.batch_spans())

    def render_png(self, path: str | Path, *, title: str | None = None, dpi: int = 120) -> Path:
        """Draw a Gantt chart (one row per stage, a colour per phase) and save it as a PNG."""
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
            from matplotlib.patches import Patch
        except ImportError as exc:  # pragma: no cover - matplotlib is an optional dependency
            from ..errors import ConfigError

            raise ConfigError("render_png needs matplotlib: pip install 'torch-decouple[plot]'") from exc
        path = Path(path)
        rows = max(self.num_stages, 1)
        fig, ax = plt.subplots(figsize=(11, 1.4 + 0.55 * rows))
        try:
            self._draw(ax)
            ax.legend(
                handles=[Patch(color=_COLOURS[p], label=p) for p in PHASES],
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                frameon=False,
                fontsize=8,
            )
            ax.set_title(
                title
                or f"{len({e.batch for e in self.events})} batches on {self.num_stages} stages, "
                f"{self.span * 1e3:.1f} ms"
            )
            fig.tight_layout()
            fig.savefig(path, dpi=dpi)
        finally:
            plt.close(fig)
        return path

    def _draw(self, ax: Any) -> None:
        origin = min((e.start for e in self.events), default=0.0)
        for k in range(self.num_stages):
            row = self.num_stages - 1 - k  # stage 0 on top
            for e in self.stage_events(k):
                ax.broken_barh(
                    [((e.start - origin) * 1e3, e.duration * 1e3)],
                    (row - 0.4, 0.8),
                    facecolors=_COLOURS[e.phase],
                    linewidth=0,
                )
                if e.phase == "forward" and e.duration * 1e3 > 0.04 * max(self.span * 1e3, 1e-9):
                    ax.text(
                        (e.start - origin + e.duration / 2) * 1e3,
                        row,
                        str(e.batch),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white",
                    )
        ax.set_yticks(range(self.num_stages))
        ax.set_yticklabels([f"stage {k} ({self.devices[k]})" for k in reversed(range(self.num_stages))])
        ax.set_xlabel("time (ms)")
        ax.set_ylim(-0.6, self.num_stages - 0.4)
