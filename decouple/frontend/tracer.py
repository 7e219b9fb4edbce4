"""Choosing a frontend: trace with torch.fx, fall back to torch.export, once per training mode that can differ.

``tracer="auto"`` tries fx first (fast, keeps Python-level module calls). When fx fails inside a
submodule, it traces again with that module's class as a leaf module (the module runs as one call,
its parameters stay in one stage), unless the module is a container of blocks (a leaf would hide the
places to split inside it); when fx still fails, torch.export (non-strict) takes over. Both say so with a
:class:`TracerFallbackWarning`. fx traces a model in train mode, and again in eval mode only when
the first trace read some module's ``training`` flag (``mode_reads.py``): otherwise the two graphs
are the same and one trace serves both. torch.export traces both modes in one export (``export.py``).
Two traces with the same code are merged too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..errors import ConfigError, TraceError
from .fallbacks import TracerFallbackWarning
from .inputs import InputSpec
from .preserve import training_mode
from .propagate import propagate
from .trace import DYNAMIC_SIZES, Trace, TracerName

__all__ = ["TracerFallbackWarning", "trace", "trace_modes", "TRACERS", "MAX_LEAF_RETRIES"]

TRACERS = ("auto", "fx", "export")

#: how many failing submodule classes ``tracer="auto"`` makes leaves of before it uses torch.export
MAX_LEAF_RETRIES = 3


def trace(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    training: bool,
    tracer: TracerName = "fx",
    leaf_modules: Iterable[Any] = (),
    autowrap_functions: Iterable[Callable[..., Any]] = (),
    known_pins: dict[Any, list[str]] | None = None,
    dynamic_sizes: str = "all",
) -> Trace:
    """Trace ``model`` in the given training mode with the named frontend ("fx" or "export").

    ``known_pins`` lets traces of several modes share the export frontend's pinned-size probes;
    ``dynamic_sizes`` says which input sizes export keeps dynamic ("all", "batch", "none").
    """
    inputs = InputSpec.from_example(model, args, kwargs)
    with training_mode(model, training):
        if tracer == "fx":
            from .fx import trace_fx

            result = trace_fx(model, inputs, training, leaf_modules, autowrap_functions)
        elif tracer == "export":
            from .export import trace_export

            result = trace_export(
                model,
                args,
                kwargs,
                inputs=inputs,
                training=training,
                known_pins=known_pins,
                dynamic_sizes=dynamic_sizes,
            )
        else:
            raise ConfigError(f"unknown tracer {tracer!r}; use 'fx' or 'export' (or 'auto' in convert())")
    result.graph_module.train(training)
    return result


def trace_export_all(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    modes: tuple[bool, ...],
    known_pins: dict[Any, list[str]] | None = None,
    dynamic_sizes: str = "all",
) -> dict[bool, Trace]:
    """A torch.export trace of ``model`` per training mode in ``modes``, all from one export call."""
    from .export import trace_export_modes

    inputs = InputSpec.from_example(model, args, kwargs)
    with training_mode(model, modes[0]):
        results = trace_export_modes(
            model, args, kwargs, inputs=inputs, modes=modes, known_pins=known_pins, dynamic_sizes=dynamic_sizes
        )
    for mode in reversed(modes):  # a graph both modes share is left in the first mode
        results[mode].graph_module.train(mode)
    return results


def trace_modes(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    tracer: TracerName = "auto",
    leaf_modules: Iterable[Any] = (),
    autowrap_functions: Iterable[Callable[..., Any]] = (),
    modes: tuple[bool, ...] = (True, False),
    dynamic_sizes: str = "all",
) -> dict[bool, Trace]:
    """Traces of ``model`` per training mode in ``modes``, propagated on the example inputs.

    With ``tracer="auto"`` a failure of fx retries fx with leaf modules, then falls back to
    torch.export (with a warning). Modes whose graph cannot differ from the first map to its trace.
    ``dynamic_sizes`` ("all", "batch", "none") says which input sizes torch.export keeps dynamic.
    """
    if tracer not in TRACERS:
        raise ConfigError(f"unknown tracer {tracer!r}; use one of {', '.join(repr(t) for t in TRACERS)}")
    if dynamic_sizes not in DYNAMIC_SIZES:
        raise ConfigError(
            f"unknown dynamic_sizes {dynamic_sizes!r}; use one of {', '.join(repr(d) for d in DYNAMIC_SIZES)}: "
            "which input sizes a torch.export trace keeps dynamic (the others are checked on entry)"
        )
    first, *rest = modes
    pins: dict[Any, list[str]] = {}
    frontend, leaves, traces = _first_trace(
        model, args, kwargs, tracer, list(leaf_modules), modes, autowrap_functions, pins, dynamic_sizes
    )
    for mode in rest:
        if mode not in traces:  # fx: trace again only when some module read its training flag
            traces[mode] = traces[first] if traces[first].mode_readers == set() else trace(
                model, args, kwargs, training=mode, tracer=frontend, leaf_modules=leaves,
                autowrap_functions=autowrap_functions, known_pins=pins, dynamic_sizes=dynamic_sizes,
            )  # fmt: skip
        if traces[mode].graph_module.code == traces[first].graph_module.code:
            traces[mode] = traces[first]  # the same code: one trace serves both
    for tr in {id(t): t for t in traces.values()}.values():
        propagate(tr, tr.inputs.bind(args, kwargs))
    return traces


def _first_trace(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    tracer: TracerName,
    leaves: list[Any],
    modes: tuple[bool, ...],
    autowrap_functions: Iterable[Callable[..., Any]],
    pins: dict[Any, list[str]],
    dynamic_sizes: str,
) -> tuple[TracerName, list[Any], dict[bool, Trace]]:
    """The first mode's trace, with the frontend and leaf modules that made it (fx retries, then export).

    torch.export traces every mode in ``modes`` at once (one export call); fx traces the first.
    """
    from .fx import FxTraceError

    frontend: TracerName = "fx" if tracer == "auto" else tracer
    added: list[str] = []
    while True:
        try:
            if frontend == "export":
                results = trace_export_all(
                    model, args, kwargs, modes=modes, known_pins=pins, dynamic_sizes=dynamic_sizes
                )
            else:
                results = {modes[0]: trace(
                    model, args, kwargs, training=modes[0], tracer=frontend, leaf_modules=leaves,
                    autowrap_functions=autowrap_functions, known_pins=pins,
                )}  # fmt: skip
            break
        except TraceError as exc:
            if tracer != "auto" or frontend == "export":
                raise
            leaf = _leaf_to_retry(model, exc, leaves) if len(added) < MAX_LEAF_RETRIES else None
            if isinstance(exc, FxTraceError) and leaf is not None:
                leaves.append(leaf)
                added.append(f"{leaf.__name__} (failed in {exc.scope[0]!r})" if exc.scope else leaf.__name__)
                continue
            warnings.warn(
                f"torch.fx could not trace {type(model).__name__} ({str(exc).splitlines()[0][:160]}); "
                "using torch.export instead (pass tracer='export' to skip this attempt)",
                TracerFallbackWarning,
                stacklevel=4,
            )
            frontend = "export"
    if added:
        warnings.warn(
            f"torch.fx could not trace into {', '.join(added)}; traced {type(model).__name__} with fx again, each "
            "such module as a leaf (it runs as one call and its parameters stay in one stage, so no split falls "
            "inside it). Pass leaf_modules=[...] to choose leaves yourself, or tracer='export' to trace into them",
            TracerFallbackWarning,
            stacklevel=4,
        )
    return frontend, leaves, results


def _leaf_to_retry(model: nn.Module, exc: TraceError, leaves: list[Any]) -> type[nn.Module] | None:
    """The class of the submodule fx failed in, when making it a leaf is worth a try.

    Not when fx failed in the root's own code, when the class is a leaf already, or when the module
    is a container of blocks (a child with children of its own): as a leaf it would hide the places
    to split inside it, which torch.export keeps.
    """
    scope = getattr(exc, "scope", None)
    if scope is None or scope[1] in leaves:
        return None
    leaf = scope[1]
    for module in model.modules():
        if type(module) is leaf and any(any(True for _ in child.children()) for child in module.children()):
            return None
    return leaf
