"""The method registry: a training method is a list of passes over a :class:`~decouple.compiler.program.Program`.

Each pass is a function ``pass_(program, options) -> None`` that edits the program in place:
``detach_boundaries`` marks what crosses a cut, ``attach_*`` give stages their local
objectives, ``end_to_end`` turns local training into plain backprop. A :class:`Method` names
its passes and the dataclass of options they read; :func:`method_options` validates user
options against it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..compiler.program import Program
from ..errors import ConfigError, close_matches

__all__ = [
    "Pass",
    "Method",
    "METHODS",
    "get_method",
    "method_options",
    "run_passes",
    "register_method",
    "parse_options",
]

Pass = Callable[[Program, Any], None]


@dataclass(frozen=True)
class Method:
    """A training method: the passes that compile it and the options they read."""

    name: str
    passes: tuple[Pass, ...]
    options: type
    summary: str


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` available to :func:`decouple.convert` by name."""
    METHODS[method.name] = method
    return method


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


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``["temperature=0.5", "head=linear"]`` -> ``{"temperature": 0.5, "head": "linear"}`` (values parsed as JSON when they are)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"a method option takes KEY=VALUE (e.g. temperature=0.5), got {item!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options
