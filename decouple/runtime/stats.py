"""Training statistics: running per-stage loss and accuracy meters, and the summary a run returns.

A meter is written by one thread (a stage's worker) and read by the caller. Losses stay tensors
until they are known to be computed: on CUDA each entry carries an event and becomes a float
once the event has completed, so recording a loss never stalls the stage's stream.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..tree import tensor_leaves

__all__ = ["StageMeter", "RunStats", "correct_predictions", "peak_memory", "reset_peak_memory", "batch_size"]


@dataclass
class RunStats:
    """What a training run (a drained pipeline, or a ``fit`` epoch) reports.

    ``losses``: mean local loss per stage with an objective, keyed ``"stage0"``, ... as
    ``train_step`` returns them. ``accuracy``: of the last stage's predictions, when they are
    ``(batch, classes)`` logits and the target holds class indices. ``peak_memory``: bytes per
    stage, CUDA ``max_memory_allocated`` of its device (stages sharing a device share the
    number), ``None`` on CPU where it is not measurable per stage. From ``fit``: ``learning_rates``
    per stage at the end of the epoch's training, and ``validation`` metrics of the inference path
    (``"accuracy"``, ``"loss"``, ``"exit1_accuracy"``, ...) when a validation loader was given.
    """

    losses: dict[str, float]
    batches: int
    samples: int
    seconds: float
    accuracy: float | None = None
    peak_memory: list[int | None] = field(default_factory=list)
    learning_rates: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Samples per second."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in self.losses.items())
        acc = f"  acc {self.accuracy:.4f}" if self.accuracy is not None else ""
        val = "".join(f"  val_{k} {v:.4f}" for k, v in self.validation.items())
        return f"{self.batches} batches, {self.samples} samples in {self.seconds:.2f}s ({self.throughput:.1f}/s)  {shown}{acc}{val}"


class StageMeter:
    """Running loss (and accuracy) of one stage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None, int, Any]] = []
        self.loss_sum = 0.0
        self.count = 0
        self.last: float | None = None
        self.correct = 0
        self.total = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor | None = None, total: int = 0, event: Any = None) -> None:
        """Record a batch's detached loss (and correct predictions out of ``total``)."""
        with self._lock:
            self._pending.append((loss.detach(), correct, total, event))
        self.resolve(wait=False)

    def resolve(self, *, wait: bool = True) -> None:
        """Turn computed entries into floats; with ``wait``, wait for every entry."""
        with self._lock:
            while self._pending:
                loss, correct, total, event = self._pending[0]
                if event is not None:
                    if wait:
                        event.synchronize()
                    elif not event.query():
                        break
                self._pending.pop(0)
                self.last = float(loss)
                self.loss_sum += self.last
                self.count += 1
                if correct is not None:
                    self.correct += int(correct)
                    self.total += total

    @property
    def mean(self) -> float | None:
        return self.loss_sum / self.count if self.count else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None


def correct_predictions(prediction: Any, target: Any) -> tuple[torch.Tensor, int] | None:
    """``(correct count, batch size)`` when ``prediction`` is ``(N, C)`` logits and ``target`` ``(N,)`` class indices."""
    if not (isinstance(prediction, torch.Tensor) and isinstance(target, torch.Tensor)):
        return None
    if prediction.dim() != 2 or target.dim() != 1 or target.shape[0] != prediction.shape[0]:
        return None
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        return None
    with torch.no_grad():
        correct = (prediction.argmax(1) == target.to(prediction.device)).sum()
    return correct, int(target.shape[0])


def batch_size(args: Sequence[Any], kwargs: dict[str, Any], target: Any) -> int:
    """The leading dimension of the first tensor among the inputs (else the target), or 1."""
    for value in [*args, *kwargs.values(), target]:
        leaves = tensor_leaves(value)
        for leaf in leaves:
            if leaf.dim() > 0:
                return int(leaf.shape[0])
    return 1


def reset_peak_memory(devices: Sequence[torch.device]) -> None:
    """Start measuring peak memory on each CUDA device in ``devices``."""
    for d in dict.fromkeys(devices):
        if d.type == "cuda":
            torch.cuda.reset_peak_memory_stats(d)


def peak_memory(devices: Sequence[torch.device]) -> list[int | None]:
    """Per stage: peak bytes allocated on its CUDA device since the reset, ``None`` elsewhere."""
    return [int(torch.cuda.max_memory_allocated(d)) if d.type == "cuda" else None for d in devices]
