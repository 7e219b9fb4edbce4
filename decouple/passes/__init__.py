"""Passes over a :class:`~decouple.ir.Program`; a training method is a list of them.

Each pass is a function ``pass_(program, options) -> None`` that edits the program in place:
``detach_boundaries`` marks what crosses a cut, ``attach_*`` give stages their local
objectives, ``end_to_end`` turns local training into plain backprop. A :class:`Method` names
its passes and the dataclass of options they read; :func:`method_options` validates user
options against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, close_matches
from ..ir import Program
from .common import PoolOptions
from .al import AssociatedOptions, attach_associated_learning
from .detach import detach_boundaries
from .early_exit import ExitOptions, attach_exits
from .scl import SupConOptions, attach_supcon
from .task import attach_task_loss, end_to_end

__all__ = ["Method", "METHODS", "get_method", "method_options", "run_passes", "register_method"]

Pass = Callable[[Program, Any], None]


@dataclass(frozen=True)
class Method:
    """A training method: the passes that compile it and the options they read."""

    name: str
    passes: tuple[Pass, ...]
    options: type
    summary: str


@dataclass(frozen=True)
class BackpropOptions:
    """``method="bp"`` takes no options: the model trains end to end on its task loss."""


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` available to :func:`decouple.convert` by name."""
    METHODS[method.name] = method
    return method


register_method(
    Method(
        "scl",
        (detach_boundaries, attach_supcon, attach_task_loss),
        SupConOptions,
        "supervised contrastive projection heads per stage (Delog-SCL / SCPL)",
    )
)
register_method(
    Method(
        "al",
        (detach_boundaries, attach_associated_learning),
        AssociatedOptions,
        "associated learning: bridges and target-side autoencoders per stage, the head replaced by decoders",
    )
)
register_method(
    Method(
        "early_exit",
        (detach_boundaries, attach_exits, attach_task_loss),
        ExitOptions,
        "an auxiliary classifier per stage trained with cross-entropy (early exit)",
    )
)
register_method(
    Method(
        "bp",
        (attach_task_loss, end_to_end),
        BackpropOptions,
        "end-to-end backpropagation of the task loss (the baseline)",
    )
)


def get_method(name: str) -> Method:
    if not isinstance(name, str) or name not in METHODS:
        listing = "; ".join(f"{m.name!r}: {m.summary}" for m in METHODS.values())
        hint = close_matches(name, METHODS) if isinstance(name, str) else ""
        raise ConfigError(f"unknown method {name!r}{hint}. Available methods: {listing}")
    return METHODS[name]


def method_options(method: Method, given: dict[str, Any]) -> Any:
    """Build ``method``'s options from user keyword arguments, rejecting unknown ones."""
    fields = {f.name: f for f in dataclasses.fields(method.options)}
    unknown = [k for k in given if k not in fields]
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        hints = "".join(close_matches(k, fields) for k in unknown)
        raise ConfigError(
            f"unknown option(s) {', '.join(repr(k) for k in unknown)} for method {method.name!r}{hints} "
            f"(its options: {valid})"
        )
    values = dict(given)
    for name, value in values.items():
        if name.endswith("_dims") and isinstance(value, (list, tuple)):
            values[name] = tuple(value)
    return method.options(**values)


def run_passes(program: Program, method: Method, options: Any) -> Program:
    for pass_ in method.passes:
        pass_(program, options)
    return program


__all__ += [
    "PoolOptions",
    "SupConOptions",
    "AssociatedOptions",
    "ExitOptions",
    "BackpropOptions",
    "detach_boundaries",
    "attach_supcon",
    "attach_associated_learning",
    "attach_exits",
    "attach_task_loss",
    "end_to_end",
]
