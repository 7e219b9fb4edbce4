"""Detach boundaries: no gradient crosses a cut.

Every tensor a stage receives from an earlier stage is detached on entry. ``detach()`` shares
storage and version counter with its source, so when the receiving stage mutates the value in
place (``nn.ReLU(inplace=True)`` right after a cut, ``x += y``, ``x[i] = v``, directly or
through a view) the input is cloned too: otherwise the in-place op would corrupt a tensor the
producing stage (or a later stage reading the same carried value) still needs.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..compiler.partition import StagePlan
from ..compiler.program import Program
from ..frontend.attributes import qualified_target
from ..tree import tensor_leaves

__all__ = ["detach_boundaries", "mutated_inputs"]

_INPLACE_OPERATORS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.imatmul, operator.setitem,
}  # fmt: skip

_VIEW_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "t", "flatten", "squeeze",
    "unsqueeze", "expand", "expand_as", "narrow", "select", "unflatten", "chunk", "split", "unbind",
    "contiguous", "detach", "as_strided", "__getitem__", "movedim", "moveaxis", "swapaxes", "swapdims",
    "diagonal", "unfold", "tensor_split", "split_with_sizes", "real", "imag", "view_as_real",
}  # fmt: skip

_VIEW_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
    torch.narrow, torch.select, torch.chunk, torch.split, torch.unbind, torch.movedim, torch.swapaxes,
    torch.diagonal, torch.t, torch.detach, torch.tensor_split, operator.getitem, torch.real, torch.imag,
}  # fmt: skip


def detach_boundaries(program: Program, options: Any) -> None:
    """Mark every tensor input of stages 1.. as detached, or cloned where an in-place op follows."""
    for spec in program.stages[1:]:
        for mode, plan in spec.plans.items():
            graph_nodes = program.partitions[mode].trace.nodes
            mutated = mutated_inputs(plan, graph_nodes, program.root)
            policy: dict[str, str] = {}
            for name in plan.inputs:
                if not tensor_leaves(graph_nodes[name].meta.get("val")):
                    continue  # ints, shapes, None pass through untouched
                policy[name] = "clone" if name in mutated else "detach"
            spec.policies[mode] = policy


def mutated_inputs(plan: StagePlan, nodes: dict[str, fx.Node], root: nn.Module) -> set[str]:
    """Inputs of ``plan`` that one of its nodes mutates in place, directly or through a view."""
    mine = set(plan.nodes)
    result = set()
    for name in plan.inputs:
        aliases = _aliases(nodes[name], mine)
        for alias in aliases:
            if any(u.name in mine and _mutates(u, alias, root) for u in alias.users):
                result.add(name)
                break
    return result


def _aliases(node: fx.Node, mine: set[str]) -> list[fx.Node]:
    """``node`` and every node in the stage that is a view of it."""
    found = [node]
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for user in current.users:
            if user.name in mine and user not in found and _is_view_of(user, current):
                found.append(user)
                frontier.append(user)
    return found


def _is_view_of(node: fx.Node, source: fx.Node) -> bool:
    if not node.args or node.args[0] is not source:
        return False
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    if node.op == "call_function":
        if node.target in _VIEW_FUNCTIONS:
            return True
        schema = getattr(node.target, "_schema", None)
        if schema is not None:
            return any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
    return False


def _mutates(node: fx.Node, value: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` writes into ``value`` in place."""
    if node.kwargs.get("out") is value:
        return True
    first = node.args[0] if node.args else None
    if node.op == "call_module":
        module = root.get_submodule(qualified_target(node))
        return first is value and bool(getattr(module, "inplace", False))
    if node.op == "call_method":
        name = qualified_target(node)
        return first is value and name.endswith("_") and not name.startswith("__")
    if node.op == "call_function":
        target = node.target
        if target in _INPLACE_OPERATORS:
            return first is value
        schema = getattr(target, "_schema", None)
        if schema is not None:
            return any(
                a.alias_info is not None and a.alias_info.is_write and _arg(node, i, a.name) is value
                for i, a in enumerate(schema.arguments)
            )
        name = getattr(target, "__name__", "")
        if first is value and (
            (name.endswith("_") and not name.startswith("__")) or node.kwargs.get("inplace") is True
        ):
            return True
        # F.relu(x, True)-style positional inplace flags
        if first is value and name in _POSITIONAL_INPLACE and len(node.args) > _POSITIONAL_INPLACE[name]:
            return node.args[_POSITIONAL_INPLACE[name]] is True
    return False


_POSITIONAL_INPLACE = {
    "relu": 1, "relu6": 1, "elu": 2, "selu": 1, "celu": 2, "leaky_relu": 2, "hardtanh": 3, "hardswish": 1,
    "hardsigmoid": 1, "silu": 1, "mish": 1, "rrelu": 4, "threshold": 3, "dropout": 3, "alpha_dropout": 3,
    "dropout1d": 3, "dropout2d": 3, "dropout3d": 3, "feature_alpha_dropout": 3,
}  # fmt: skip


def _arg(node: fx.Node, index: int, name: str) -> Any:
    if index < len(node.args):
        return node.args[index]
    return node.kwargs.get(name)
