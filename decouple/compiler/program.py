"""The program that passes transform: a partitioned model plus what each stage learns from.

``trace -> partition`` produce one :class:`~decouple.compiler.partition.Partition` per training mode;
:class:`Program` holds them with per-stage specs. Passes (``decouple.passes``) decide which
boundary inputs are detached or cloned, attach each stage's local objective, and describe how the
inference module is assembled; codegen then turns the program into modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .partition import Partition, StagePlan

__all__ = ["StageSpec", "Program", "InputPolicy", "InferenceTail", "MODES"]

#: a boundary input is passed as is, detached, or detached and cloned (an in-place op follows).
InputPolicy = str  # "keep" | "detach" | "clone"

MODES = (True, False)  # training mode, eval mode


@dataclass
class InferenceTail:
    """Modules the inference path applies after the first ``stages`` stages.

    The first module reads the representation of stage ``stages - 1``; each later one reads the
    previous module's output. Names are where they appear in the inference module.
    """

    stages: int
    modules: list[tuple[str, nn.Module]]
    extras: dict[str, str] = field(default_factory=dict)  # first module's kwarg -> message value


@dataclass
class StageSpec:
    """One stage of the program: its plan per training mode, boundary policy and objective."""

    index: int
    plans: dict[bool, StagePlan]
    policies: dict[bool, dict[str, InputPolicy]] = field(default_factory=lambda: {True: {}, False: {}})
    objective: nn.Module | None = None
    #: keyword arguments of the objective filled from the stage's message (e.g. an attention mask)
    objective_extras: dict[str, str] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def plan(self) -> StagePlan:
        return self.plans[True]


@dataclass
class Program:
    """A model being compiled: partitions (per mode), stage specs and method-level facts."""

    method: str
    root: nn.Module
    partitions: dict[bool, Partition]
    stages: list[StageSpec]
    options: Any
    loss_fn: Callable[[Any, Any], torch.Tensor]
    num_classes: int | None = None
    #: train with one loss through every stage (the bp baseline) instead of local objectives
    end_to_end: bool = False
    #: stages of the partition that training and inference drop (AL replaces the model's head)
    dropped: list[StagePlan] = field(default_factory=list)
    #: inference paths: exit point (number of stages) -> tail; ``default_exit`` picks one
    tails: dict[int, InferenceTail] = field(default_factory=dict)
    default_exit: int | None = None
    notes: list[str] = field(default_factory=list)

    def partition(self, training: bool) -> Partition:
        return self.partitions[training]

    def node(self, training: bool, name: str) -> fx.Node:
        return self.partitions[training].trace.node(name)

    def representation_value(self, k: int) -> Any:
        """The example value (meta or fake tensor) of stage ``k``'s representation, from the train trace;
        a tuple ``(representation, *crossing)`` at a multi-tensor cut."""
        plan = self.stages[k].plans[True]
        if plan.representation is None:
            raise ValueError(f"stage {k} has no representation (it is the last stage)")
        value = self.node(True, plan.representation).meta.get("val")
        if not plan.crossing:
            return value
        return (value, *[self.node(True, name).meta.get("val") for name in plan.crossing])

    def output_value(self) -> Any:
        """The example value of the model's output in the train trace."""
        out = self.partitions[True].trace.output_node()
        return _plain(fx.node.map_arg(out.args[0], lambda n: n.meta.get("val")))


def _plain(value: Any) -> Any:
    """fx's immutable containers back to the ``dict`` / ``list`` the model returned (for messages and checks)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
