"""Validation after an epoch: the inference path (what deployment runs) on a loader, without local heads.

Reports the task loss (the conversion's ``loss_fn``, in fp32) and, for ``(N, C)`` logits with class
index targets, the accuracy; for methods with early exits (``early_exit``, ``al``) also each exit's
accuracy (``inference_module(exit=l)``). The forward runs under the conversion's autocast.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..errors import InputError
from ..objectives.precision import full_precision
from ..tree import move_tree
from .batches import unpack_batch
from .protocol import StagedModel
from .stats import correct_predictions
from .step import autocast

__all__ = ["validate"]


class _Tally:
    def __init__(self) -> None:
        self.correct = 0
        self.scored = 0
        self.loss = 0.0
        self.samples = 0

    def add(self, output: Any, target: Any, loss: torch.Tensor | None, samples: int) -> None:
        scored = correct_predictions(output, target)
        if scored is not None:
            self.correct += int(scored[0])
            self.scored += scored[1]
        if loss is not None:
            self.loss += float(loss) * samples
            self.samples += samples


def validate(dm: StagedModel, loader: Iterable[Any]) -> dict[str, float]:
    """``{"loss": ..., "accuracy": ..., "exit1_accuracy": ...}`` of ``dm``'s inference path on ``loader``."""
    config = dm.training_config
    modules: dict[int | None, Any] = {None: dm.inference_module()}
    modules.update({exit: dm.inference_module(exit=exit) for exit in dm.exits})
    device = next((p.device for p in modules[None].parameters()), dm.stages[0].device)
    tallies = {exit: _Tally() for exit in modules}
    loss_fn = full_precision(dm.task_loss)
    batches = 0
    with torch.no_grad(), autocast(device, config):
        for batch in loader:
            args, kwargs, target = move_tree(unpack_batch(batch), device)
            batches += 1
            for exit, module in modules.items():
                output = module(*args, **kwargs)
                loss = _loss(loss_fn, output, target) if exit is None else None
                tallies[exit].add(output, target, loss, _samples(target))
    if batches == 0:
        raise InputError("the validation loader yielded no batches; give fit(validation=...) at least one batch")
    metrics: dict[str, float] = {}
    main = tallies.pop(None)
    if main.samples:
        metrics["loss"] = main.loss / main.samples
    if main.scored:
        metrics["accuracy"] = main.correct / main.scored
    for exit, tally in tallies.items():
        if tally.scored:
            metrics[f"exit{exit}_accuracy"] = tally.correct / tally.scored
    return metrics


def _loss(loss_fn: Any, output: Any, target: Any) -> torch.Tensor | None:
    try:
        loss = loss_fn(output, target)
    except (
        RuntimeError,
        TypeError,
        ValueError,
    ):  # an inference output the training loss does not take (e.g. AL's decoded labels)
        return None
    return loss if isinstance(loss, torch.Tensor) and loss.dim() == 0 else None


def _samples(target: Any) -> int:
    return int(target.shape[0]) if isinstance(target, torch.Tensor) and target.dim() > 0 else 1
