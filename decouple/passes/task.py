"""The task-loss pass: the last stage trains on the model's own loss from its (detached) input."""

from __future__ import annotations

from typing import Any

from ..compiler.program import Program
from ..errors import ConfigError
from ..objectives.losses import default_task_loss, logits_of
from ..objectives.task import TaskObjective
from ..tree import tensor_leaves

__all__ = ["attach_task_loss"]


def attach_task_loss(program: Program, options: Any) -> None:
    """The last stage's objective is ``loss_fn(output, target)`` on exactly what the model returns."""
    out = program.output_value()
    if not tensor_leaves(out):
        raise ConfigError(
            f"the model returns {'None' if out is None else type(out).__name__ + ' with no tensor in it'}, so the last "
            "stage has nothing to train on; "
            "make forward return the logits (or a structure holding them)"
        )
    if program.loss_fn is default_task_loss and logits_of(out) is None:
        raise ConfigError(
            f"the model returns {type(out).__name__}, neither a logits tensor nor an output with a `logits` "
            "field, so the default cross-entropy task loss does not apply; pass loss_fn=lambda output, target: "
            "... to convert() (it is called with exactly what the model returns)"
        )
    program.stages[-1].objective = TaskObjective(program.loss_fn)
