"""Choosing a frontend: trace with torch.fx, fall back to torch.export, once per training mode.

``tracer="auto"`` tries fx first (fast, keeps Python-level module calls) and falls back to
torch.export (non-strict) with a :class:`TracerFallbackWarning` when fx cannot trace the model
(every Hugging Face model in transformers 5.x, data-dependent Python). A model is traced in train
and in eval mode; when both graphs are the same the eval trace is dropped and one serves both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..errors import ConfigError, TraceError
from .inputs import InputSpec
from .preserve import training_mode
from .propagate import propagate
from .trace import Trace, TracerName

__all__ = ["TracerFallbackWarning", "trace", "trace_modes", "TRACERS"]

TRACERS = ("auto", "fx", "export")


class TracerFallbackWarning(UserWarning):
    """``tracer="auto"``: torch.fx could not trace the model, so torch.export was used."""


def trace(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    training: bool,
    tracer: TracerName = "fx",
    leaf_modules: Iterable[Any] = (),
    autowrap_functions: Iterable[Callable[..., Any]] = (),
) -> Trace:
    """Trace ``model`` in the given training mode with the named frontend ("fx" or "export")."""
    inputs = InputSpec.from_example(model, args, kwargs)
    with training_mode(model, training):
        if tracer == "fx":
            from .fx import trace_fx

            result = trace_fx(model, inputs, training, leaf_modules, autowrap_functions)
        elif tracer == "export":
            from .export import trace_export

            result = trace_export(model, args, kwargs, inputs=inputs, training=training)
        else:
            raise ConfigError(f"unknown tracer {tracer!r}; use 'fx' or 'export' (or 'auto' in convert())")
    result.graph_module.train(training)
    return result


def trace_modes(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    tracer: TracerName = "auto",
    leaf_modules: Iterable[Any] = (),
    autowrap_functions: Iterable[Callable[..., Any]] = (),
    modes: tuple[bool, ...] = (True, False),
) -> dict[bool, Trace]:
    """Traces of ``model`` per training mode in ``modes``, propagated on the example inputs.

    With ``tracer="auto"`` a failure of fx falls back to torch.export (with a warning). When the
    train and eval graphs have the same code, the eval mode maps to the train trace.
    """
    if tracer not in TRACERS:
        raise ConfigError(f"unknown tracer {tracer!r}; use one of {', '.join(repr(t) for t in TRACERS)}")
    leaves, wrapped = list(leaf_modules), list(autowrap_functions)
    frontend: TracerName = "fx" if tracer == "auto" else tracer

    def run(training: bool) -> Trace:
        return trace(
            model, args, kwargs, training=training, tracer=frontend, leaf_modules=leaves, autowrap_functions=wrapped
        )

    traces: dict[bool, Trace] = {}
    first, *rest = modes
    try:
        traces[first] = run(first)
    except TraceError as exc:
        if tracer != "auto":
            raise
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__} ({str(exc).splitlines()[0][:160]}); "
            "using torch.export instead (pass tracer='export' to skip this attempt)",
            TracerFallbackWarning,
            stacklevel=3,
        )
        frontend = "export"
        traces[first] = run(first)
    for mode in rest:
        other = run(mode)
        traces[mode] = traces[first] if other.graph_module.code == traces[first].graph_module.code else other
    for tr in {id(t): t for t in traces.values()}.values():
        propagate(tr, tr.inputs.bind(args, kwargs))
    return traces
