"""Normalising an exported graph into what the fx frontend produces, so partition, passes and codegen see one kind.

* one placeholder per ``forward`` argument (nested arguments are unpacked with ``getitem``), no
  pytree input/output codegen, no ``_guards_fn`` call, no dtype/device metadata asserts;
* the output node returns the model's own output structure: a tensor, tuple, dict, named tuple or
  a dataclass such as a Hugging Face ``ModelOutput`` (rebuilt by a constructor call);
* lifted constants live on the model (``_export_constant0``);
* module scopes keyed like fx (``"bert.encoder.layer.1"``, ``"block@1"`` for a second call);
* device constants (``arange(..., device="cpu")``) become the device of a tensor the op already
  sees, so stages placed on other devices than the example inputs run unchanged;
* the dimensions the graph pins are checked on entry (``pinned_dims.py``).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from ..errors import TraceError
from .attributes import attribute, has_attribute
from .both_modes import is_guards_call
from .inputs import InputSpec
from .pinned_dims import guard_fixed_dims, traced_leaves
from .trace import call_key, split_call_key

__all__ = ["normalised"]

#: ops that only assert metadata the example inputs had (dtype, device); they would pin a device
_METADATA_ASSERTS = {"_assert_tensor_metadata"}

#: nodes whose value a stage computes or receives (not parameters: those belong to one stage)
_VALUE_OPS = ("placeholder", "call_function", "call_module", "call_method")


def normalised(
    model: nn.Module,
    gm: fx.GraphModule,
    graph: fx.Graph,
    out_spec: Any,
    in_spec: Any,
    named: dict[str, Any],
    inputs: InputSpec,
    known_pins: dict[Any, list[str]] | None,
) -> fx.GraphModule:
    """One exported graph made into what the fx frontend produces (see the module docstring)."""
    traced = traced_leaves(graph, named)
    _drop_guards(graph)
    _bind_placeholders(graph, inputs, named, in_spec)
    _adopt_constants(graph, gm, model)
    _normalise_scopes(graph, model)
    _relative_devices(graph)
    _rebuild_output(graph, out_spec, model)
    graph._codegen = fx.graph.CodeGen()
    result = fx.GraphModule(model, graph, type(model).__name__)  # owns the graph: lint checks its attributes
    graph.eliminate_dead_code()
    graph.lint()
    guard_fixed_dims(result, inputs, named, traced, known_pins)
    result.recompile()
    return result


def _drop_guards(graph: fx.Graph) -> None:
    """Remove the ``_guards_fn`` call (input shape guards) and dtype/device metadata asserts."""
    for node in list(graph.nodes):
        if is_guards_call(node) or (
            node.op == "call_function" and _op_name(node.target) in _METADATA_ASSERTS and not node.users
        ):
            graph.erase_node(node)


def _bind_placeholders(graph: fx.Graph, inputs: InputSpec, named: dict[str, Any], in_spec: Any) -> None:
    """One placeholder per ``forward`` argument, named as the argument; fills ``inputs.placeholders``.

    Arguments without any tensor (ints, flags, ``None``) were baked into the graph by export: they
    move to ``inputs.specialized`` so that a later call with another value is an error.
    """
    leaves, spec = pytree.tree_flatten_with_path(((), named))
    if spec != in_spec:
        raise TraceError(
            f"torch.export flattened the inputs as {in_spec}, expected {spec}; pass example_inputs by name"
        )
    old = [n for n in graph.nodes if n.op == "placeholder"]
    assert len(old) == len(leaves), "one placeholder per flat input"
    by_arg: dict[str, list[tuple[tuple[Any, ...], fx.Node]]] = {}
    for (path, _), node in zip(leaves, old):
        argument = cast(pytree.MappingKey[str, Any], path[1]).key  # ((), {name: value}): the kwargs' key
        by_arg.setdefault(argument, []).append((tuple(path[2:]), node))
    first = next(n for n in graph.nodes if n.op != "placeholder")
    created: dict[str, fx.Node] = {}
    for name in list(inputs.names):
        entries = by_arg.get(name, [])
        if not any(isinstance(x, torch.Tensor) for x in pytree.tree_leaves(named[name])):
            _specialise(graph, inputs, name, named[name], entries)
            continue
        if len(entries) == 1 and not entries[0][0]:
            placeholder = entries[0][1]  # a plain tensor argument: keep export's node, named after it
            placeholder.target = name
            first.prepend(placeholder)
        else:
            with graph.inserting_before(first):
                placeholder = created[name] = graph.placeholder(name)
        inputs.placeholders[name] = placeholder.name
    with graph.inserting_before(first):
        for name, placeholder in created.items():
            for path, node in by_arg[name]:
                node.replace_all_uses_with(_unpack(graph, placeholder, path))
                graph.erase_node(node)


def _specialise(
    graph: fx.Graph, inputs: InputSpec, name: str, value: Any, entries: list[tuple[tuple[Any, ...], fx.Node]]
) -> None:
    """Turn a tensor-free argument into a specialised one: export baked its value into the graph."""
    inputs.names.remove(name)
    inputs.specialized[name] = value
    for _, node in entries:
        if node.users:
            raise TraceError(
                f"torch.export kept the non-tensor input {name!r} as a graph value; pass it as a tensor, "
                "or leave it out of example_inputs so it keeps its default"
            )
        graph.erase_node(node)


def _unpack(graph: fx.Graph, value: fx.Node, path: tuple[Any, ...]) -> fx.Node:
    """``value[k0][k1]...`` for a pytree key path (sequence indices, mapping keys, attributes)."""
    for key in path:
        if isinstance(key, pytree.GetAttrKey):
            value = graph.call_function(getattr, (value, key.name))
        else:
            value = graph.call_function(operator.getitem, (value, getattr(key, "idx", getattr(key, "key", None))))
    return value


def _adopt_constants(graph: fx.Graph, gm: fx.GraphModule, model: nn.Module) -> None:
    """Give ``get_attr`` targets that are not attributes of ``model`` (lifted constants) a home on it.

    fx does the same for tensor constants; the attributes are plain tensors, not in the state dict.
    """
    for node in graph.nodes:
        if node.op != "get_attr" or has_attribute(model, node.target):
            continue
        value = attribute(gm, node.target)
        name = _free_name(model, "_export_constant")
        setattr(model, name, value)
        node.target = name


def _free_name(model: nn.Module, base: str) -> str:
    i = 0
    while hasattr(model, f"{base}{i}"):
        i += 1
    return f"{base}{i}"


def _normalise_scopes(graph: fx.Graph, model: nn.Module) -> None:
    """Rewrite ``nn_module_stack`` as fx writes it: ``{qualname[@n]: (qualname, module class)}``."""
    types = {name: type(m) for name, m in model.named_modules()}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        scopes: dict[str, tuple[str, Any]] = {}
        for key, value in stack.items():
            qualname = value[0] if isinstance(value, tuple) else str(value)
            if not qualname or qualname not in types:
                continue  # the root module, or a pseudo-module of export's metadata hooks
            scopes[call_key(qualname, split_call_key(key)[1])] = (qualname, types[qualname])
        node.meta["nn_module_stack"] = scopes


def _relative_devices(graph: fx.Graph) -> None:
    """Replace device constants with ``t.device`` of a tensor the op's stage already holds.

    Export records ``x.to(other.device)`` and ``torch.arange(n, device=...)`` with the example
    inputs' device. A stage runs on one device and receives its inputs there, so the device of the
    op's own tensor argument, or for factory functions of a tensor that is still live at that point
    (read again later, so no cut can separate the two), is the device the original code meant.
    """
    nodes = list(graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    for i, node in enumerate(nodes):
        if node.op != "call_function" or not _has_device_constant(node):
            continue
        anchor = next((a for a in node.all_input_nodes if _is_tensor_node(a)), None) or _live_tensor(nodes, position, i)
        if anchor is None:
            continue
        with graph.inserting_before(node):
            device = graph.call_function(getattr, (anchor, "device"))
        device.meta["nn_module_stack"] = dict(node.meta.get("nn_module_stack") or {})
        node.args = _replace_devices(node.args, device)
        node.kwargs = _replace_devices(node.kwargs, device)


def _live_tensor(nodes: list[fx.Node], position: dict[fx.Node, int], i: int) -> fx.Node | None:
    """The closest tensor before position ``i`` that a node after ``i`` reads; else the first tensor input."""
    for j in range(i - 1, -1, -1):
        candidate = nodes[j]
        live = candidate.op in _VALUE_OPS and _is_tensor_node(candidate)
        if live and any(position.get(u, -1) > i for u in candidate.users):
            return candidate
    return next((n for n in nodes if n.op == "placeholder" and _is_tensor_node(n)), None)


def _has_device_constant(node: fx.Node) -> bool:
    found = False

    def visit(x: Any) -> Any:
        nonlocal found
        found = found or isinstance(x, torch.device)
        return x

    fx.node.map_aggregate((node.args, node.kwargs), visit)
    return found


def _replace_devices(value: Any, device: fx.Node) -> Any:
    return fx.node.map_aggregate(value, lambda x: device if isinstance(x, torch.device) else x)


def _is_tensor_node(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _rebuild_output(graph: fx.Graph, out_spec: Any, model: nn.Module) -> None:
    """Make the output node return the model's own output structure instead of a flat tuple."""
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    flat = output.args[0]
    flat = list(flat) if isinstance(flat, (tuple, list)) else [flat]
    with graph.inserting_before(output):
        structure = _build(graph, out_spec, iter(flat), model)
    graph.erase_node(output)
    graph.output(structure)


def _build(graph: fx.Graph, spec: Any, leaves: Iterator[Any], model: nn.Module) -> Any:
    if spec.is_leaf():
        return next(leaves)
    children = [_build(graph, child, leaves, model) for child in spec.children()]
    kind = spec.type
    if kind is tuple or kind is list:
        return kind(children)
    if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
        return kind(*children)  # named tuple: fx writes its constructor
    if isinstance(kind, type) and issubclass(kind, dict) and not dataclasses.is_dataclass(kind):
        return dict(zip(spec.context, children))
    if dataclasses.is_dataclass(kind) and isinstance(spec.context, (list, tuple)):
        node = graph.call_function(cast("Callable[..., Any]", kind), (), dict(zip(spec.context, children)))
        return node  # e.g. a Hugging Face ModelOutput, rebuilt from its fields
    raise TraceError(
        f"{type(model).__name__} returns a {getattr(kind, '__name__', kind)}, which decouple cannot rebuild from "
        "a graph; return tensors, tuples, lists, dicts, named tuples or dataclasses of tensors from forward"
    )


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", "") or str(target)
    if isinstance(target, torch._ops.OpOverload):
        name = target._schema.name.split("::")[-1]
    return name
