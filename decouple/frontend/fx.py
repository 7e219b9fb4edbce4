"""The torch.fx frontend: symbolic tracing with module scopes, user leaf modules and traced buffer updates.

fx freezes ``self.training``-dependent Python branches (functional dropout, stochastic depth,
auxiliary heads) at trace time, so :func:`~decouple.frontend.tracer.trace_modes` traces a model once
per mode. Arguments ``example_inputs`` leave out are specialised to their defaults
(:class:`~decouple.frontend.inputs.InputSpec` rejects later calls that pass another value).
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from ..errors import ConfigError, TraceError
from .inputs import InputSpec
from .mode_reads import original_class, recording_mode_reads
from .preserve import restore_buffers, save_buffers
from .trace import Trace, call_key

__all__ = ["trace_fx", "FxTraceError"]


class FxTraceError(TraceError):
    """torch.fx failed; ``scope`` is the innermost module being traced then (qualified name, class), if any."""

    def __init__(self, message: str, scope: tuple[str, type[nn.Module]] | None) -> None:
        super().__init__(message)
        self.scope = scope


_GUARD_TARGETS = {"_assert_is_none", "_assert", "eq"}


class _ScopeTracer(fx.Tracer):
    """An fx tracer with user leaf modules that also records what each module call returned."""

    def __init__(
        self,
        leaf_modules: Iterable[Any],
        autowrap_functions: Iterable[Callable[..., Any]],
        *,
        proxy_buffers: bool = True,
    ) -> None:
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self.proxy_buffer_attributes = proxy_buffers  # buffers read in forward become get_attr nodes
        leaves = list(leaf_modules)
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_names = {n for n in leaves if isinstance(n, str)}
        bad = [t for t in leaves if not isinstance(t, (type, str))]
        if bad:
            raise ConfigError(f"leaf_modules takes module classes or qualified names, got {bad!r}")
        self.module_outputs: dict[str, list[str]] = {}
        self.calls: dict[str, int] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        qualname = self.path_of_module(m)
        count = self.calls.get(qualname, 0)
        self.calls[qualname] = count + 1
        out = super().call_module(m, forward, args, kwargs)
        self.module_outputs[call_key(qualname, count)] = [
            p.node.name for p in pytree.tree_leaves(out) if isinstance(p, fx.Proxy)
        ]
        return out


def trace_fx(
    model: nn.Module,
    inputs: InputSpec,
    training: bool,
    leaf_modules: Iterable[Any],
    autowrap_functions: Iterable[Callable[..., Any]],
) -> Trace:
    """Trace with buffers as graph values, so in-place buffer updates in forward are part of the graph.

    Why: fx reads buffers as constants by default, which runs ``self.count.add_(1)`` once at trace time
    and leaves it out of the graph (the buffer would never update in training). A model whose Python
    control flow reads a buffer (``if self.steps > 0``) cannot trace that way; it is traced with
    constant buffers instead, which is exact as long as forward does not update them (checked).
    """
    concrete = dict(inputs.specialized) or None
    tracer = _ScopeTracer(leaf_modules, autowrap_functions, proxy_buffers=True)
    try:
        with recording_mode_reads(model) as readers:
            graph = tracer.trace(model, concrete_args=concrete)
    except Exception as proxied:  # fx raises many types: TraceError, TypeError, AttributeError, ...
        tracer = _ScopeTracer(leaf_modules, autowrap_functions, proxy_buffers=False)
        saved = save_buffers(model)
        try:
            with recording_mode_reads(model) as readers:
                graph = tracer.trace(model, concrete_args=concrete)
        except Exception as exc:
            scope = _failing_scope(tracer)
            raise FxTraceError(_describe_trace_failure(model, exc, scope), scope) from exc
        finally:
            changed = restore_buffers(model, saved)
        if changed:
            raise TraceError(
                f"{type(model).__name__}.forward updates buffer(s) {', '.join(repr(c) for c in changed)} in place and "
                "also reads buffers in Python control flow, so torch.fx cannot trace the update into the graph.\n"
                "Fix: run the module that owns the buffer as one opaque call with leaf_modules=[...] (its buffers then "
                "update inside it), or trace with tracer='export'."
            ) from proxied
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    _drop_specialization_guards(gm, inputs)
    _drop_var_keyword(gm, inputs)
    for node in gm.graph.nodes:
        if node.op == "placeholder" and node.target in inputs.names:
            inputs.placeholders[node.target] = node.name
    gm.recompile()
    return Trace(gm, training, inputs, "fx", tracer.module_outputs, mode_readers=set(readers))


def _failing_scope(tracer: _ScopeTracer) -> tuple[str, type[nn.Module]] | None:
    """The innermost non-root module fx was tracing when it failed."""
    for qualname, typ in reversed(tracer.module_stack.values()):
        if qualname and isinstance(typ, type) and issubclass(typ, nn.Module):
            return qualname, original_class(typ)
    return None


def _drop_specialization_guards(gm: fx.GraphModule, inputs: InputSpec) -> None:
    """Remove placeholders (and their assert guards) that fx made for specialised arguments.

    :class:`InputSpec` already rejects calls that pass another value for them. A specialised
    placeholder that the computation really reads stays, fed with its fixed value.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "placeholder" or node.target in inputs.names:
            continue
        # fx names the placeholder of a specialised argument "mask_1" for "mask"
        base = node.target if node.target in inputs.specialized else re.sub(r"_\d+$", "", node.target)
        if base not in inputs.specialized:
            continue
        guards: list[fx.Node] = []
        frontier = list(node.users)
        only_guards = True
        while frontier:
            user = frontier.pop()
            name = getattr(user.target, "__name__", str(user.target))
            if user.op == "call_function" and name in _GUARD_TARGETS:
                guards.append(user)
                frontier.extend(user.users)
            else:
                only_guards = False
        if not only_guards:
            inputs.constants[node.name] = inputs.specialized[base]
            continue
        for guard in sorted(guards, key=_position(graph), reverse=True):
            graph.erase_node(guard)
        graph.erase_node(node)
    graph.lint()


def _drop_var_keyword(gm: fx.GraphModule, inputs: InputSpec) -> None:
    """Remove the placeholder fx makes for a ``**kwargs`` catch-all that example inputs leave empty."""
    if inputs.var_keyword is None:
        return
    for node in list(gm.graph.nodes):
        if node.op == "placeholder" and node.target == "**" + inputs.var_keyword:
            if node.users:
                raise TraceError(
                    f"forward reads its **{inputs.var_keyword} argument, which torch.fx sees as one opaque value; "
                    "trace with tracer='export', or give the arguments by name"
                )
            gm.graph.erase_node(node)


def _position(graph: fx.Graph) -> Callable[[fx.Node], int]:
    order = {n: i for i, n in enumerate(graph.nodes)}
    return order.__getitem__


def _describe_trace_failure(model: nn.Module, exc: Exception, scope: tuple[str, Any] | None) -> str:
    where = ""
    if scope is not None and scope[0]:
        typ = scope[1].__name__ if isinstance(scope[1], type) else str(scope[1])
        where = f" while tracing module {scope[0]!r} ({typ})"
    frame = _user_frame(exc)
    location = f"\n  failing line: {frame}" if frame else ""
    leaf_hint = f"leaf_modules=[{scope[0]!r}]" if scope is not None and scope[0] else "leaf_modules=[...]"
    return (
        f"torch.fx could not trace {type(model).__name__}{where}: {type(exc).__name__}: {exc}{location}\n"
        f"Fix: keep the construct out of the graph with {leaf_hint} (the module runs as one opaque call) "
        "or autowrap_functions=[fn] for a free function, or trace with tracer='export' "
        "(torch.export handles data-dependent Python and most Hugging Face models)."
    )


def _user_frame(exc: BaseException) -> str | None:
    """The innermost traceback frame outside torch and decouple: the user's failing line."""
    torch_dir = os.path.dirname(torch.__file__)
    own_dir = os.path.dirname(__file__)
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith(torch_dir) or frame.filename.startswith(own_dir):
            continue
        found = f"{frame.filename}:{frame.lineno} in {frame.name}: {frame.line}"
    return found
