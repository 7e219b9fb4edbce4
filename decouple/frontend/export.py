"""The torch.export frontend: traces models torch.fx cannot (Hugging Face transformers, data-dependent Python).

``torch.export.export(strict=False)`` runs ``forward`` in Python on fake tensors and records aten
ops; ``ExportedProgram.module()`` gives a graph whose ``get_attr`` nodes read parameters under
their original qualified names and whose nodes keep ``nn_module_stack``; ``export_graph.py`` then
normalises it into what the fx frontend produces.

Every dimension of every tensor input is exported as ``Dim.AUTO`` (dynamic unless the model pins
it), so batch size and sequence length may differ from the example inputs; dimensions the model
pins (an image size, an LSTM's sequence length) are checked on entry (``pinned_dims.py``). When a
shape guard defeats dynamic sizes, export runs again with only the batch size dynamic, then at the
example's sizes (a :class:`StaticSizesWarning` says so).

Export bakes ``self.training`` into the graph (``aten.dropout(x, p, train)``, ``aten.batch_norm(..., training,
...)``), so a graph per training mode is needed when some module reads its mode (``mode_reads.py``);
both come from one export call (``both_modes.py``).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..errors import InputError, TraceError
from .both_modes import both_modes, has_root_hooks, split_passes
from .export_graph import normalised
from .fallbacks import StaticSizesWarning
from .inputs import InputSpec
from .mode_reads import recording_mode_reads
from .preserve import training_mode
from .trace import DYNAMIC_SIZES, Trace

__all__ = ["trace_export", "trace_export_modes", "dynamic_dims"]

#: what torch.export's errors say when the dynamic sizes, not the model, are the problem (``s0``, guards)
_SHAPE_FAILURE = re.compile(r"\bs\d+\b|cannot be solved|[Cc]onstraint|guard|Dim\.|dynamic|specializ|symbolic")


def trace_export(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    inputs: InputSpec,
    training: bool,
    known_pins: dict[Any, list[str]] | None = None,
    dynamic_sizes: str = "all",
) -> Trace:
    """Trace ``model`` (already in the wanted training mode) with ``torch.export`` and normalise the graph.

    ``known_pins`` carries the pinned-size probes' answers from one training mode to the other.
    """
    return trace_export_modes(
        model, args, kwargs, inputs=inputs, modes=(training,), known_pins=known_pins, dynamic_sizes=dynamic_sizes
    )[training]


def trace_export_modes(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    inputs: InputSpec,
    modes: tuple[bool, ...],
    known_pins: dict[Any, list[str]] | None = None,
    dynamic_sizes: str = "all",
) -> dict[bool, Trace]:
    """A normalised graph of ``model`` per training mode in ``modes``, from one ``torch.export`` call.

    With one mode, the model is exported as it is (the caller set its mode). With both, ``forward``
    runs in eval mode, then in train mode, inside one export, and the joint graph is cut in two; when
    the first pass read no module's training flag, the second does not run and its graph serves both. ``inputs`` describes the
    first mode's graph; other modes get a fresh copy.
    """
    named = _named_inputs(inputs, args, kwargs)
    wanted = sorted(set(modes))  # False first: the eval pass must not see the train pass's buffer updates
    if len(wanted) > 1 and has_root_hooks(model):
        return _per_mode(model, args, kwargs, inputs, modes, known_pins, dynamic_sizes)
    with recording_mode_reads(model) as readers, both_modes(model, wanted, readers) as calls:
        exported = _export(model, named, dynamic_sizes)
    gm = exported.module()
    in_spec, out_spec = gm._in_spec, gm._out_spec
    if len(wanted) == 1:
        graphs = {wanted[0]: (gm.graph, out_spec)}
    else:
        try:  # the second pass ran when the first read some module's mode (``both_modes``)
            graphs = split_passes(gm.graph, out_spec, calls, second_ran=bool(readers))
        except TraceError:  # the passes share what cannot be cut apart: one export per mode
            return _per_mode(model, args, kwargs, inputs, modes, known_pins, dynamic_sizes)
    traces: dict[bool, Trace] = {}
    built: dict[int, Trace] = {}
    for mode in modes:
        graph, spec = graphs[mode]
        if id(graph) in built:
            traces[mode] = built[id(graph)]
            continue
        mode_inputs = inputs if mode == modes[0] else InputSpec.from_example(model, args, kwargs)
        result = normalised(model, gm, graph, spec, in_spec, named, mode_inputs, known_pins)
        traces[mode] = built[id(graph)] = Trace(result, mode, mode_inputs, "export", mode_readers=set(readers))
    return traces


def _per_mode(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    inputs: InputSpec,
    modes: tuple[bool, ...],
    known_pins: dict[Any, list[str]] | None,
    dynamic_sizes: str,
) -> dict[bool, Trace]:
    """One export per training mode (the model's mode set for each)."""
    pins = known_pins if known_pins is not None else {}
    traces: dict[bool, Trace] = {}
    for mode in modes:
        spec = inputs if mode == modes[0] else InputSpec.from_example(model, args, kwargs)
        with training_mode(model, mode):
            one = trace_export_modes(
                model, args, kwargs, inputs=spec, modes=(mode,), known_pins=pins, dynamic_sizes=dynamic_sizes
            )
            traces[mode] = one[mode]
    return traces


# ---------------------------------------------------------------------------------------------
# Running torch.export


def _named_inputs(inputs: InputSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The example inputs as ``{argument name: value}`` in ``forward`` order."""
    bound = inputs.signature.bind_partial(*args, **kwargs).arguments
    named = {name: bound[name] for name in inputs.names}
    for name, value in named.items():
        for leaf in pytree.tree_leaves(value):
            if isinstance(leaf, torch.Tensor) and leaf.dim() > 0 and leaf.shape[0] == 1:
                raise InputError(
                    f"example input {name!r} has batch size 1 (shape {tuple(leaf.shape)}); torch.export fixes "
                    "dimensions of size 0 or 1 to that size, so the converted model would accept no other batch "
                    "size. Give example inputs with a batch of at least 2"
                )
    return named


def dynamic_dims(value: Any) -> Any:
    """``Dim.AUTO`` for every dimension of every tensor in ``value``; ``None`` for other leaves."""
    auto = torch.export.Dim.AUTO
    return pytree.tree_map(
        lambda x: dict.fromkeys(range(x.dim()), auto) if isinstance(x, torch.Tensor) and x.dim() else None, value
    )


def _export(model: nn.Module, named: dict[str, Any], dynamic_sizes: str = "all") -> Any:
    """Export with the input sizes ``dynamic_sizes`` asks for dynamic ("all", "batch", "none"). When a shape
    guard defeats that, again with fewer (only the batch size, then none) and a warning that says so;
    the sizes kept static are checked on entry."""
    attempts = [(dynamic_dims, "every input size dynamic"), (_batch_dims, "only the batch size dynamic"),
                (lambda value: None, "the example's sizes")]  # fmt: skip
    attempts = attempts[DYNAMIC_SIZES.index(dynamic_sizes) :]
    try:
        return _run_export(model, named, {name: attempts[0][0](value) for name, value in named.items()})
    except Exception as exc:  # export raises many types: UserError, RuntimeError, GuardOnDataDependent...
        failure = exc
    if not _SHAPE_FAILURE.search(str(failure)):
        raise TraceError(_describe_failure(model, failure)) from failure
    first = str(failure).strip().splitlines()[0][:200]
    for dims, kept in attempts[1:]:
        try:
            exported = _run_export(model, named, {name: dims(value) for name, value in named.items()})
        except Exception:
            continue
        sizes = ", ".join(f"{name} {tuple(v.shape)}" for name, v in named.items() if isinstance(v, torch.Tensor))
        warnings.warn(
            f"torch.export could not export {type(model).__name__} with {attempts[0][1]} ({first}); exported it "
            f"with {kept} ({sizes}): inputs must have those sizes (checked on entry)",
            StaticSizesWarning,
            stacklevel=2,
        )
        return exported
    raise TraceError(_describe_failure(model, failure)) from failure


def _batch_dims(value: Any) -> Any:
    """``Dim.AUTO`` for the first dimension of every tensor in ``value``; ``None`` for other leaves."""
    auto = torch.export.Dim.AUTO
    return pytree.tree_map(lambda x: {0: auto} if isinstance(x, torch.Tensor) and x.dim() else None, value)


def _run_export(model: nn.Module, named: dict[str, Any], dynamic: Any) -> Any:
    with warnings.catch_warnings(), _no_stack_traces():
        # nn.LSTM caches ``_flat_weights`` as plain attributes; export warns about them
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        return torch.export.export(model, (), named, strict=False, dynamic_shapes=dynamic)


@contextlib.contextmanager
def _no_stack_traces() -> Iterator[None]:
    """Export without recording a Python stack trace per node (a fifth of export's time; unused here)."""
    config = torch.fx.config
    old = getattr(config, "do_not_emit_stack_traces", None)
    if old is not None:
        config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        if old is not None:
            config.do_not_emit_stack_traces = old


def _describe_failure(model: nn.Module, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    hint = "Fix: make forward exportable (no data-dependent Python branches on tensor values), or split it into modules"
    if "Cache" in str(exc) or "past_key_values" in str(exc):
        hint = (
            "Fix: the model returns a key/value cache; build it with use_cache=False "
            "(e.g. `model.config.use_cache = False`) so forward returns tensors only"
        )
    elif "not a known type" in str(exc):
        hint = "Fix: return tensors, tuples, dicts or dataclasses of tensors from forward"
    return f"torch.export could not trace {type(model).__name__}: {type(exc).__name__}: {first}\n{hint}."
