"""Frontends that turn an ``nn.Module`` into an ``fx.GraphModule`` whose nodes know their module scope.

Every frontend produces a :class:`Trace`: a graph in one training mode whose nodes carry
``meta["nn_module_stack"]`` (the module calls they run inside, with ``@N`` suffixes for
repeated calls) and, after :func:`propagate`, ``meta["val"]`` (fake tensors or plain values).

torch.fx freezes ``self.training``-dependent Python branches (functional dropout, stochastic
depth, auxiliary heads) at trace time, so a model is traced once per mode; when both traces
produce the same code the eval trace is dropped and the train trace serves both.
"""

from __future__ import annotations

import contextlib
import operator
import os
import re
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from .errors import ConfigError, TraceError
from .inputs import InputSpec

__all__ = ["Trace", "trace", "propagate", "TracerName"]

TracerName = Literal["auto", "fx", "export"]

_GUARD_TARGETS = {"_assert_is_none", "_assert", "eq"}


@dataclass
class Trace:
    """One traced graph of a model in one training mode.

    ``module_outputs`` maps a module-call key (``"layer1"``, ``"block@1"``) to the names of
    the nodes it returned, in return order, when the frontend could observe them.
    """

    graph_module: fx.GraphModule
    training: bool
    inputs: InputSpec
    frontend: str
    module_outputs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph

    def node(self, name: str) -> fx.Node:
        for n in self.graph.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


class _ScopeTracer(fx.Tracer):
    """An fx tracer with user leaf modules that also records what each module call returned."""

    def __init__(
        self, leaf_modules: Iterable[Any], autowrap_functions: Iterable[Callable[..., Any]], *, proxy_buffers: bool = True
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

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        qualname = self.path_of_module(m)
        count = self.calls.get(qualname, 0)
        self.calls[qualname] = count + 1
        out = super().call_module(m, forward, args, kwargs)
        key = qualname if count == 0 else f"{qualname}@{count}"
        self.module_outputs[key] = [p.node.name for p in pytree.tree_leaves(out) if isinstance(p, fx.Proxy)]
        return out


@contextlib.contextmanager
def _training_mode(model: nn.Module, training: bool) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


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
    with _training_mode(model, training):
        if tracer == "fx":
            result = _trace_fx(model, inputs, training, leaf_modules, autowrap_functions)
        elif tracer == "export":
            from .export import trace_export

            result = trace_export(model, args, kwargs, inputs=inputs, training=training)
        else:
            raise ConfigError(f"unknown tracer {tracer!r}; use 'auto', 'fx' or 'export'")
    result.graph_module.train(training)
    return result


def _trace_fx(
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
        graph = tracer.trace(model, concrete_args=concrete)
    except Exception:  # fx raises many types: TraceError, TypeError, AttributeError, ...
        tracer = _ScopeTracer(leaf_modules, autowrap_functions, proxy_buffers=False)
        saved = {name: b.detach().clone() for name, b in model.named_buffers()}
        try:
            graph = tracer.trace(model, concrete_args=concrete)
        except Exception as exc:
            scope = next(reversed(tracer.module_stack.values()), None) if tracer.module_stack else None
            raise TraceError(_describe_trace_failure(model, exc, scope)) from exc
        finally:
            changed = _restore_buffers(model, saved)
        if changed:
            raise TraceError(
                f"{type(model).__name__}.forward updates buffer(s) {', '.join(repr(c) for c in changed)} in place and "
                "also reads buffers in Python control flow, so torch.fx cannot trace the update into the graph.\n"
                "Fix: run the module that owns the buffer as one opaque call with leaf_modules=[...] (its buffers then "
                "update inside it), or trace with tracer='export'."
            )
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    _drop_specialization_guards(gm, inputs)
    _drop_var_keyword(gm, inputs)
    for node in gm.graph.nodes:
        if node.op == "placeholder" and node.target in inputs.names:
            inputs.placeholders[node.target] = node.name
    gm.recompile()
    return Trace(gm, training, inputs, "fx", tracer.module_outputs)


def _restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> list[str]:
    """Put back buffer values saved before a trace; the names of those the trace changed."""
    changed = []
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in saved and (b.shape != saved[name].shape or not torch.equal(b, saved[name])):
                changed.append(name)
                if b.shape == saved[name].shape:
                    b.copy_(saved[name])
    return changed


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


# ---------------------------------------------------------------------------------------------
# Shape propagation


class _Propagator(fx.Interpreter):
    """Records each node's example value (``meta["val"]``) and FLOPs (``meta["flops"]``)."""

    def __init__(self, gm: fx.GraphModule, counter: Any = None) -> None:
        super().__init__(gm)
        self.counter = counter

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops() if self.counter is not None else 0
        result = super().run_node(n)
        n.meta["val"] = _to_meta(result)
        if self.counter is not None:
            n.meta["flops"] = int(self.counter.get_total_flops() - before)
        return result


def _to_meta(value: Any) -> Any:
    """Keep shapes and dtypes of tensors without their data."""

    def convert(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and not _is_fake(x):
            return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta", requires_grad=x.requires_grad)
        return x

    return pytree.tree_map(convert, value)


def _is_fake(x: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(x, FakeTensor)


@contextlib.contextmanager
def _preserved_state(gm: nn.Module) -> Iterator[None]:
    """Restore buffers (running stats, counters) and the RNG after running a graph for analysis."""
    saved = {name: b.detach().clone() for name, b in gm.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            with torch.no_grad():
                for name, b in gm.named_buffers():
                    if name in saved and b.shape == saved[name].shape:
                        b.copy_(saved[name])


def propagate(tr: Trace, values: dict[str, Any]) -> None:
    """Annotate every node of ``tr`` with ``meta["val"]`` (and ``meta["flops"]``) on fake example inputs.

    Runs with fake tensors (no compute, no memory for activations); falls back to a real
    run without gradients when an operator has no fake implementation. Buffers and the RNG
    are restored either way, so analysis never changes the model.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    gm = tr.graph_module
    ordered = [values[n.name] for n in gm.graph.nodes if n.op == "placeholder" and n.name in values]
    try:
        with _preserved_state(gm):
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            with mode:
                fake = [mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in ordered]
                counter = FlopCounterMode(display=False)
                with counter:
                    _Propagator(gm, counter).run(*fake)
        return
    except Exception:
        pass
    try:
        with _preserved_state(gm), torch.no_grad():
            _Propagator(gm).run(*ordered)
    except Exception as exc:
        raise TraceError(
            f"the traced graph of {tr.graph_module.__class__.__name__} fails on example_inputs: "
            f"{type(exc).__name__}: {exc}. Check that example_inputs are valid inputs of the model."
        ) from exc


def tensor_leaves(value: Any) -> list[torch.Tensor]:
    """The tensors inside a (possibly nested) value."""
    return [x for x in pytree.tree_leaves(value) if isinstance(x, torch.Tensor)]


def is_getitem(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem
