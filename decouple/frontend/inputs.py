"""The input signature of a traced model: binding user arguments to graph placeholders.

Tracing specialises every ``forward`` argument that ``example_inputs`` does not give to its
default value; :class:`InputSpec` remembers which arguments became graph inputs and rejects
later calls that pass a specialised one, instead of silently ignoring it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError, close_matches

__all__ = ["InputSpec", "normalize_example_inputs", "signature_of"]

_VAR_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def signature_of(model: nn.Module) -> inspect.Signature:
    """The signature of ``model.forward`` (without ``self``)."""
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError) as exc:  # builtins / C extensions
        raise InputError(
            f"cannot read the signature of {type(model).__name__}.forward ({exc}); "
            "decouple needs a Python forward method to bind inputs"
        ) from exc


def normalize_example_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split ``example_inputs`` into positional and keyword parts.

    Accepts a tuple/list of positional inputs, a dict of keyword inputs, or a single tensor.
    """
    if example_inputs is None:
        raise InputError(
            "example_inputs is required: pass a tuple of example positional inputs, e.g. "
            "example_inputs=(torch.randn(2, 3, 32, 32),), or a dict of keyword inputs"
        )
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        bad = [k for k in example_inputs if not isinstance(k, str)]
        if bad:
            raise InputError(f"keys of example_inputs must be argument names, got {bad!r}")
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise InputError(
        f"example_inputs must be a tuple of positional inputs or a dict of keyword inputs, "
        f"got {type(example_inputs).__name__}; wrap a single input as (x,)"
    )


@dataclass
class InputSpec:
    """Which ``forward`` arguments are graph inputs, and which were specialised away.

    ``names``: the argument names that are graph inputs, in ``forward`` order.
    ``placeholders``: for each of ``names``, the name of its placeholder node in the graph.
    ``specialized``: arguments fixed at trace time to the given value (their defaults).
    ``constants``: placeholders of specialised arguments the graph still reads, with their value.
    ``var_keyword``: the name of a ``**kwargs`` catch-all of ``forward`` (Hugging Face models have
    one); it is accepted as long as no input is passed through it.
    """

    signature: inspect.Signature
    names: list[str]
    placeholders: dict[str, str] = field(default_factory=dict)
    specialized: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    var_keyword: str | None = None

    @classmethod
    def from_example(cls, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> InputSpec:
        sig = signature_of(model)
        params = list(sig.parameters.values())
        var = [p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL]
        if var:
            raise InputError(
                f"{type(model).__name__}.forward takes variable positional arguments (*{var[0]}); "
                "decouple binds inputs to named arguments. Wrap the model in a module with explicit arguments"
            )
        var_keyword = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as exc:
            names = [p.name for p in params]
            hint = ""
            for k in kwargs:
                if k not in names:
                    hint = close_matches(k, names)
            raise InputError(f"example_inputs do not match {type(model).__name__}.forward{sig}: {exc}{hint}") from exc
        given = dict(bound.arguments)
        if var_keyword is not None and given.pop(var_keyword, None):
            extra = sorted(bound.arguments[var_keyword])
            raise InputError(
                f"example_inputs pass {extra} through **{var_keyword} of {type(model).__name__}.forward; "
                "decouple binds inputs to named arguments only: drop them, or wrap the model in a module "
                "that names them"
            )
        specialized = {p.name: p.default for p in params if p.name not in given and p.kind not in _VAR_KINDS}
        return cls(signature=sig, names=list(given), specialized=specialized, var_keyword=var_keyword)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Map call arguments to ``{placeholder node name: value}``, with clear errors."""
        try:
            bound = self.signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise InputError(f"inputs do not match forward{self.signature}: {exc}") from exc
        values = dict(bound.arguments)
        if self.var_keyword is not None and values.pop(self.var_keyword, None):
            extra = sorted(bound.arguments[self.var_keyword])
            raise InputError(
                f"unknown input(s) {extra}: they would go to **{self.var_keyword}, which the traced graph "
                f"does not read; the model was converted with inputs {self.names}"
            )
        for name, value in values.items():
            fixed = self.specialized.get(name, value)
            if name in self.specialized and value is not fixed and not _same_constant(value, fixed):
                raise InputError(
                    f"argument {name!r} was not in example_inputs, so tracing fixed it to "
                    f"{self.specialized[name]!r}; pass it in example_inputs at convert() time "
                    "to make it a graph input"
                )
        missing = [n for n in self.names if n not in values]
        if missing:
            raise InputError(
                f"missing input(s) {', '.join(repr(m) for m in missing)}: the model was converted with "
                f"inputs {self.names}; pass them positionally or by keyword"
            )
        bound_values = {self.placeholders[n]: values[n] for n in self.names}
        bound_values.update(self.constants)
        return bound_values


def _same_constant(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False
