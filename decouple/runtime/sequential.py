"""Sequential training: each stage's forward, local backward and step, one after another.

This is the reference semantics every other runtime must reproduce: stage ``k`` runs on batch
``b`` with the parameters it has after batch ``b - 1``, and hands on outputs computed before its
own update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..codegen.stage import Stage, StageResult
from ..objectives.base import LocalResult
from ..tree import move_tree

__all__ = ["forward_stages", "train_step"]


def forward_stages(
    stages: Sequence[Stage], message: dict[str, Any], carry: Any, *, objectives: bool = True
) -> list[StageResult]:
    """Run every stage in order (with gradients as the caller's grad mode says), no backward."""
    results = []
    for stage in stages:
        message = move_tree(message, stage.device)
        carry = move_tree(carry, stage.device)
        result = stage.run(message, carry, with_objective=objectives)
        results.append(result)
        message = result.message
        if result.result is not None:
            carry = result.result.carry
    return results


def train_step(
    stages: Sequence[Stage],
    message: dict[str, Any],
    carry: Any,
    *,
    end_to_end: bool = False,
    batch: int | None = None,
    results: list[LocalResult | None] | None = None,
) -> list[torch.Tensor | None]:
    """One training step on one batch; returns each stage's detached loss (``None`` without one).

    Decoupled methods step stage by stage; ``end_to_end`` (backprop) runs every stage forward,
    backpropagates the last stage's loss through all of them and steps every optimizer.
    ``results``, when given, receives each stage's :class:`LocalResult` (for metrics).
    """
    if end_to_end:
        forward = forward_stages(stages, message, carry)
        if results is not None:
            results.extend(r.result for r in forward)
        final = forward[-1].result
        assert final is not None, "the last stage of an end-to-end program has the task loss"
        if not stages[-1].check_finite(final.loss, batch=batch):  # raises, or counts the skip
            return [None] * (len(stages) - 1) + [final.loss.detach()]
        for stage in stages:
            if stage.optimizer is not None:
                stage.optimizer.zero_grad(set_to_none=True)
        final.loss.backward()
        for stage in stages:
            stage.update()  # steps, then frees the gradients (as Stage.step does)
        return [None] * (len(stages) - 1) + [final.loss.detach()]

    losses: list[torch.Tensor | None] = []
    for stage in stages:
        with torch.no_grad():
            message = move_tree(message, stage.device)
            carry = move_tree(carry, stage.device)
        result = stage.run(message, carry)
        local = result.result
        if results is not None:
            results.append(local)
        if local is None:
            losses.append(None)
        else:
            stage.step(local.loss, batch=batch)
            losses.append(local.loss.detach())
            carry = local.carry
        message = result.message
    return losses
