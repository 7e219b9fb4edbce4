"""The method registry: a training method is a factory of local objectives, its options, and how it uses the model.

A :class:`Method` names ``make_objective(info: StageInfo) -> LocalObjective | None``, called once
per stage that trains a local objective (every stage but the last, whose objective is the
model's own loss), the options dataclass that ``convert``'s keyword arguments fill, and three
facts about the model: whether the method replaces the model's head (associated learning),
trains it end to end (the bp baseline), or lets gradients cross the cuts (an ablation).
:func:`register_method` makes a method available by name to ``convert``, the command line and
the examples; the built-in methods register themselves the same way (``passes/scl.py``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, close_matches
from ..objectives.base import LocalObjective
from ..objectives.stage_info import StageInfo
from .pooling import PoolOptions

__all__ = [
    "ObjectiveFactory",
    "Method",
    "METHODS",
    "register_method",
    "resolve_method",
    "method_options",
    "parse_options",
]

#: ``make_objective(info) -> LocalObjective | None``: the local objective of one stage
ObjectiveFactory = Callable[[StageInfo], LocalObjective | None]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Method:
    """A training method: how each stage's local objective is made, its options, and how it uses the model.

    make_objective: ``info -> LocalObjective | None`` (None only for ``end_to_end`` methods).
    options: the dataclass of its options (fields ``pool``, ``pool_size``, ``mask`` shape ``info.pool``).
    replaces_head: the part of the model after the last split is not trained or run; every
    remaining stage gets an objective and inference answers through the last one's exit head.
    end_to_end: the task loss is backpropagated through every stage (the bp baseline).
    detach: no gradient crosses a cut (False: each stage's loss reaches the stages before it).
    """

    name: str
    make_objective: ObjectiveFactory | None
    options: type = PoolOptions
    summary: str = ""
    replaces_head: bool = False
    end_to_end: bool = False
    detach: bool = True

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"a method name is a word of letters, digits, '_', '-' or '.', starting with a letter, got {name!r}"
            )
        if self.make_objective is None and not self.end_to_end:
            raise ConfigError(
                f"method {name!r} has no make_objective: pass a function info -> decouple.LocalObjective | None "
                "(or end_to_end=True for a method that trains the task loss end to end)"
            )
        if self.make_objective is not None and not callable(self.make_objective):
            raise ConfigError(
                f"make_objective of method {name!r} must be callable as make_objective(info), got "
                f"{type(self.make_objective).__name__}"
            )
        if self.end_to_end and (self.make_objective is not None or self.replaces_head):
            raise ConfigError(
                f"method {name!r}: end_to_end=True trains the model's own loss through every stage, so it takes no "
                "make_objective and keeps the model's head; leave them out"
            )
        if not (isinstance(self.options, type) and dataclasses.is_dataclass(self.options)):
            raise ConfigError(
                f"options of method {name!r} must be a dataclass type (e.g. @dataclass(frozen=True) class "
                f"MyOptions(decouple.PoolOptions): weight: float = 1.0), got {self.options!r}"
            )


METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    make_objective: ObjectiveFactory | None = None,
    *,
    options: type | None = None,
    summary: str = "",
    replaces_head: bool = False,
    end_to_end: bool = False,
    detach: bool = True,
    replace: bool = False,
) -> Method:
    """Make a method available by name to ``convert(method=name)`` and ``decouple ... --method name``.

    ``options`` is a dataclass whose fields are the method's keyword options (default: the pool
    options ``pool``, ``pool_size``, ``mask``); see :class:`Method` for the flags. A name that is
    already registered raises ``ConfigError`` unless ``replace=True``.
    """
    method = Method(name, make_objective, options or PoolOptions, summary, replaces_head, end_to_end, detach)
    if name in METHODS and not replace:
        raise ConfigError(
            f"method {name!r} is already registered ({METHODS[name].summary or 'no summary'}); choose another "
            "name, or pass replace=True to register_method to replace it"
        )
    METHODS[name] = method
    return method


def resolve_method(method: Any) -> Method:
    """The :class:`Method` that ``method`` names: a registered name, a ``Method``, or a ``make_objective`` callable."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        if method not in METHODS:
            listing = "; ".join(f"{m.name!r}: {m.summary}" for m in METHODS.values())
            raise ConfigError(
                f"unknown method {method!r}{close_matches(method, METHODS)}. Available methods: {listing}; "
                "or pass a function info -> decouple.LocalObjective (see decouple.register_method)"
            )
        return METHODS[method]
    if callable(method):
        name = getattr(method, "__name__", type(method).__name__)
        return Method(name if _NAME.match(name) else "custom", method, summary="a custom make_objective")
    raise ConfigError(
        f"method must be a registered name ({', '.join(METHODS)}), a decouple.Method, or a function "
        f"info -> decouple.LocalObjective, got {type(method).__name__}"
    )


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
    try:
        return method.options(**values)
    except TypeError as exc:  # a required field without a value
        raise ConfigError(f"options of method {method.name!r}: {exc}") from exc


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
