"""Compile a method into a program: the same passes for every method, steered by its :class:`Method` facts.

1. ``detach_boundaries``: no gradient crosses a cut (unless the method trains end to end, or is
   registered with ``detach=False``).
2. A method that replaces the model's head drops the last stage of the partition: its objectives
   answer instead.
3. ``attach_objectives``: ``make_objective`` for every stage that trains a local objective.
4. ``attach_task_loss``: the last stage trains on the model's own loss (unless the head is replaced).
"""

from __future__ import annotations

from typing import Any

from ..compiler.program import Program
from ..errors import ConfigError
from .detach import detach_boundaries
from .objectives import attach_objectives
from .registry import Method
from .task import attach_task_loss

__all__ = ["run_passes", "drop_head"]


def run_passes(program: Program, method: Method, options: Any) -> Program:
    """Turn the partitioned ``program`` into what ``method`` trains."""
    if method.end_to_end:
        attach_task_loss(program, options)
        program.end_to_end = True
        return program
    if method.detach:
        detach_boundaries(program, options)
    if method.replaces_head:
        drop_head(program, method.name)
    attach_objectives(program, method, options)
    if method.replaces_head:
        _answer_from_last_exit(program, method.name)
    else:
        attach_task_loss(program, options)
    return program


def drop_head(program: Program, method: str) -> None:
    """Drop the part of the model after the last split: training and inference no longer run it."""
    if len(program.stages) < 2:
        raise ConfigError(
            f"method {method!r} replaces the model's head (the part after the last split), so it needs at least one "
            "split: give splits=[...] naming where the head starts"
        )
    dropped = program.stages.pop()
    program.dropped.append(dropped.plans[True])


def _answer_from_last_exit(program: Program, method: str) -> None:
    last = len(program.stages)
    tail = program.tails.get(last)
    if tail is None:
        raise ConfigError(
            f"method {method!r} replaces the model's head, so inference answers through its last stage's objective: "
            "its exit_head() must return the module that answers from the representation"
        )
    program.default_exit = last
    replaced = ", ".join(program.dropped[-1].modules) or "the layers after the last split"
    program.notes.append(
        f"method {method} replaces the model's head ({replaced}): inference answers through stage {last - 1}'s "
        f"exit head ({type(tail.modules[0][1]).__name__})"
    )
