"""Both training modes from one ``torch.export`` call: run ``forward`` twice inside it, then cut the graph in two.

A model whose modules read ``self.training`` needs a graph per mode. Exporting twice costs twice;
instead :func:`both_modes` makes ``forward`` run in eval mode, then in train mode (so that the train
pass's updates of running statistics cannot reach the eval pass), returning ``(eval output, marker,
train output)``, and :func:`split_passes` cuts the joint graph after the marker's node. The second
pass usually costs little (export's fake-tensor and symbolic-shape caches hold what the first
computed), and it is not run at all when the first read no module's ``training`` flag.

What the cut takes care of: module calls of the second pass are renumbered (export counts
``layer@1`` on); sizes the second pass reads from first-pass tensors (export gives each symbolic size
one node) are rebuilt from the inputs' sizes; the first pass's side effects (its dropout, asserts,
scratch tensors) stay out of the train graph unless they act on a value it reads. A model whose root
has forward hooks is not run this way (its hooks would see the joint output).
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import TraceError
from .mode_reads import unrecorded
from .trace import call_key, split_call_key

__all__ = ["both_modes", "split_passes", "has_root_hooks", "is_guards_call"]


def has_root_hooks(model: nn.Module) -> bool:
    """Whether ``model``'s own call runs hooks (they would see the joint output of both passes)."""
    return bool(model._forward_hooks or model._forward_pre_hooks)


@contextlib.contextmanager
def both_modes(model: nn.Module, modes: list[bool], readers: set[str]) -> Iterator[dict[str, int]]:
    """With two modes, ``model.forward`` runs once per mode and returns ``(first, marker, second)``.

    Yields how many times each module (by qualified name) was called in the first pass, filled while
    the export runs. The marker is a fresh empty tensor made between the passes: its node divides the
    graph. ``readers`` is the set the mode-read recorder fills: when the first pass read no module's
    ``training`` flag, the second cannot differ and is not run (``second`` is ``first``).
    """
    calls: dict[str, int] = {}
    if len(modes) == 1:
        yield calls
        return
    names: dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)

    def count(module: nn.Module, args: Any) -> None:
        name = names.get(id(module))
        if name:  # not the root: its one call holds both passes
            calls[name] = calls.get(name, 0) + 1

    original = model.forward
    own = model.__dict__.get("forward")

    @functools.wraps(original)
    def joint(*args: Any, **kwargs: Any) -> tuple[Any, torch.Tensor, Any]:
        handle = nn.modules.module.register_module_forward_pre_hook(count)
        try:
            with _flags(model, modes[0]):
                first = original(*args, **kwargs)
        finally:
            handle.remove()
        marker = torch.zeros(0)  # its node divides the passes
        if not readers:
            return first, marker, first
        with _flags(model, modes[1]):
            second = original(*args, **kwargs)
        return first, marker, second

    model.forward = joint
    try:
        yield calls
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


@contextlib.contextmanager
def _flags(model: nn.Module, training: bool) -> Iterator[None]:
    """``model.train(training)`` for the block; the flags are saved and restored without reading them as a
    model does (``mode_reads`` records reads)."""
    modules = list(model.modules())
    saved = [m.__dict__["training"] for m in modules]
    with unrecorded():
        model.train(training)
    try:
        yield
    finally:
        for m, flag in zip(modules, saved):
            m.__dict__["training"] = flag


def split_passes(
    graph: fx.Graph, out_spec: Any, calls: dict[str, int], *, second_ran: bool
) -> dict[bool, tuple[fx.Graph, Any]]:
    """Cut the joint graph of an eval pass and a train pass into one graph (and output spec) per mode.

    Nodes before the marker belong to the eval pass; the train pass may read them too (a value one
    pass made and cached on a module), the eval graph never reads the train pass. The train pass's
    module calls are renumbered as if it ran alone. When the second pass did not run (``second_ran``
    false: no module read its mode), both modes get the first pass's graph, one object.
    """
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    flat = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
    eval_spec, marker_spec, train_spec = out_spec.children()
    n_eval = eval_spec.num_leaves
    eval_leaves, marker, train_leaves = flat[:n_eval], flat[n_eval], flat[n_eval + 1 :]
    if not isinstance(marker, fx.Node) or marker_spec.num_leaves != 1:
        raise TraceError("torch.export reordered the outputs of the two training-mode passes")
    nodes = [n for n in graph.nodes if n.op != "output" and not is_guards_call(n)]
    first = nodes[: nodes.index(marker)]
    if not second_ran:
        graph_of_both = _subgraph(first, eval_leaves, set())
        return {False: (graph_of_both, eval_spec), True: (graph_of_both, train_spec)}
    _sizes_from_inputs(graph, set(first), nodes[len(first) + 1 :])
    nodes = [n for n in graph.nodes if n.op != "output" and not is_guards_call(n)]
    for node in nodes[len(first) + 1 :]:
        _renumber_calls(node, calls)
    return {
        False: (_subgraph(first, eval_leaves, set()), eval_spec),
        True: (_subgraph([n for n in nodes if n is not marker], train_leaves, set(first)), train_spec),
    }


def _sizes_from_inputs(graph: fx.Graph, first: set[fx.Node], second: list[fx.Node]) -> None:
    """Make the second pass read sizes from the inputs, not from the first pass's tensors.

    Export gives each symbolic size one node, the first that produced it: the train pass reads
    ``sym_size(t, 1)`` of an eval-pass tensor ``t``, which would keep the eval pass alive in the
    train graph. Such sizes are rebuilt from the inputs' sizes at the start of the second pass.
    """
    if not second:
        return
    symbols: dict[Any, fx.Node] = {}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    rebuilt: dict[fx.Node, fx.Node] = {}
    with graph.inserting_before(second[0]):
        for node in second:
            for used in node.all_input_nodes:
                if (
                    used not in first
                    or used.op != "call_function"
                    or not isinstance(used.meta.get("val"), torch.SymInt)
                ):
                    continue
                if used not in rebuilt:
                    if not symbols:
                        symbols.update(_input_symbols(graph, placeholders))
                    rebuilt[used] = _size_node(graph, used.meta["val"].node.expr, symbols)
                node.replace_input_with(used, rebuilt[used])


def _input_symbols(graph: fx.Graph, placeholders: list[fx.Node]) -> dict[Any, fx.Node]:
    """A ``sym_size`` node for each symbol that is an input tensor's size."""
    symbols: dict[Any, fx.Node] = {}
    for node in placeholders:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            continue
        for d, size in enumerate(value.shape):
            if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol and size.node.expr not in symbols:
                symbols[size.node.expr] = graph.call_function(torch.ops.aten.sym_size.int, (node, d))
                symbols[size.node.expr].meta["val"] = size
    return symbols


def _size_node(graph: fx.Graph, expr: Any, symbols: dict[Any, fx.Node]) -> Any:
    """A node (or int) computing the size ``expr`` (a sympy expression) from the inputs' sizes."""
    from torch.utils._sympy.functions import FloorDiv, PythonMod

    if expr.is_Integer:
        return int(expr)
    if expr.is_Symbol:
        if expr not in symbols:
            raise TraceError(f"size {expr} is not an input size")
        return symbols[expr]
    ops = {"Add": operator.add, "Mul": operator.mul}
    kind = type(expr).__name__
    if kind in ops:
        value = _size_node(graph, expr.args[0], symbols)
        for arg in expr.args[1:]:
            value = graph.call_function(ops[kind], (value, _size_node(graph, arg, symbols)))
        return value
    if isinstance(expr, (FloorDiv, PythonMod)):
        op = operator.floordiv if isinstance(expr, FloorDiv) else operator.mod
        return graph.call_function(op, tuple(_size_node(graph, a, symbols) for a in expr.args))
    raise TraceError(f"cannot rebuild the size {expr} from the inputs' sizes")


def is_guards_call(node: fx.Node) -> bool:
    return node.op == "call_module" and node.target == "_guards_fn"


def _subgraph(nodes: list[fx.Node], outputs: list[Any], earlier: set[fx.Node]) -> fx.Graph:
    """A new graph of copies of ``nodes`` (in order) returning ``outputs``, with only what they need.

    Side effects are kept (placeholders, mutations, asserts, random ops), but of the ``earlier``
    pass only those that act on a value this graph needs (an in-place update of a tensor it reads):
    the other pass's dropout, asserts and scratch tensors would otherwise keep that pass alive.
    """
    needed: set[fx.Node] = set()

    def need(todo: list[fx.Node]) -> None:
        while todo:
            node = todo.pop()
            if node not in needed:
                needed.add(node)
                todo.extend(node.all_input_nodes)

    need([n for n in nodes if n not in earlier and n.is_impure()])
    need([n for n in fx.node.map_arg(tuple(outputs), lambda n: n) if isinstance(n, fx.Node)])
    effects = [n for n in nodes if n in earlier and n.op == "call_function" and n.is_impure(impure_random=False)]
    grew = True
    while grew:
        acting = [n for n in effects if n not in needed and any(t in needed for t in _written(n))]
        need(acting)
        grew = bool(acting)
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        if node in needed:
            env[node] = new.node_copy(node, env.__getitem__)
    new.output(fx.node.map_arg(tuple(outputs), env.__getitem__))
    return new


def _written(node: fx.Node) -> list[fx.Node]:
    """The tensor an in-place op writes (its first argument) and the tensors that one is a view of."""
    written = []
    value = node.args[0] if node.args else None
    while isinstance(value, fx.Node):
        written.append(value)
        target = value.target
        value = value.args[0] if isinstance(target, torch._ops.OpOverload) and target.is_view and value.args else None
    return written


def _renumber_calls(node: fx.Node, calls: dict[str, int]) -> None:
    """Shift a second-pass node's module-call suffixes (``layer@3``) back by the first pass's calls."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return
    renamed = {}
    for key, value in stack.items():
        qualname = value[0] if isinstance(value, tuple) else str(value)
        base, index = split_call_key(key)
        index -= calls.get(qualname, 0)
        if index < 0:
            raise TraceError(f"torch.export numbered the calls of {qualname!r} unexpectedly")
        renamed[call_key(base, index)] = value
    node.meta["nn_module_stack"] = renamed
