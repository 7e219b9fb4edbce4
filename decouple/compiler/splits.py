"""Split points: the names a user writes (module qualified names or fx node names) resolved to cuts in the graph.

A split naming a module cuts right after the last node its call runs, and the stage's local head
reads what the call returned (its first tensor if it returns several); a split naming an fx node
cuts after that node. Splits must be in forward order and cut at different places.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from ..errors import SplitError, close_matches
from ..frontend.trace import Trace
from ..tree import tensor_leaves
from .graph_view import ModuleCall, module_calls

__all__ = ["SplitPoint", "resolve_splits", "representation_of", "COMPUTE_OPS"]

#: node kinds that compute a value (not inputs, attributes or the output)
COMPUTE_OPS = ("call_module", "call_function", "call_method")


@dataclass(frozen=True)
class SplitPoint:
    """A resolved split: the cut falls after graph position ``cut``."""

    spec: str  # what the user wrote
    kind: str  # "module" or "node"
    cut: int
    representation: str  # node whose value the stage's local head reads

    def __repr__(self) -> str:
        return f"SplitPoint({self.spec!r}, cut after #{self.cut}, head reads {self.representation!r})"


def resolve_splits(tr: Trace, specs: Sequence[str], root: nn.Module | None = None) -> list[SplitPoint]:
    """Resolve split names (module qualified names or fx node names) to cuts, validating order."""
    if isinstance(specs, (str, bytes)):
        raise SplitError(f"splits must be a list of names, got the string {specs!r}; write splits=[{specs!r}]")
    specs = list(specs)
    if not specs:
        raise SplitError("splits is empty: give at least one module name to cut after, e.g. splits=['layer2']")
    graph = tr.graph
    nodes = list(graph.nodes)
    position = {n.name: i for i, n in enumerate(nodes)}
    calls = module_calls(graph)
    seen: set[str] = set()
    points: list[SplitPoint] = []
    for spec in specs:
        if not isinstance(spec, str):
            raise SplitError(f"split {spec!r} is not a name: give module qualified names or fx node names as strings")
        if spec in seen:
            raise SplitError(f"split {spec!r} is listed twice; each split point must appear once")
        seen.add(spec)
        points.append(_resolve_one(tr, spec, calls, position, nodes, root))
    for a, b in itertools.pairwise(points):
        if b.cut < a.cut:
            raise SplitError(
                f"splits are out of forward order: {b.spec!r} runs before {a.spec!r}; "
                f"list them in the order the model runs them"
            )
        if b.cut == a.cut:
            raise SplitError(
                f"splits {a.spec!r} and {b.spec!r} cut the graph at the same place, which would leave an "
                "empty stage between them; keep only one of them"
            )
    return points


def _resolve_one(
    tr: Trace,
    spec: str,
    calls: dict[str, list[ModuleCall]],
    position: dict[str, int],
    nodes: list[fx.Node],
    root: nn.Module | None,
) -> SplitPoint:
    if spec in calls:
        found = calls[spec]
        if len(found) > 1:
            names = ", ".join(repr(nodes[c.last].name) for c in found)
            raise SplitError(
                f"split {spec!r} is ambiguous: module {spec!r} runs {len(found)} times in forward "
                f"(it is reused, or sits inside a loop). Split at one of its calls by fx node name instead: {names}"
            )
        call = found[0]
        if tr.module_outputs.get(call.key, None) == []:
            raise SplitError(
                f"split {spec!r}: module {spec!r} returns no tensor (None, or only Python values), so there is no "
                "representation for the stage's local head to read; split at a module that returns a tensor "
                "(`decouple splits MODEL` lists candidates)"
            )
        return SplitPoint(spec, "module", call.last, representation_of(tr, call, position, nodes))
    if spec in position and nodes[position[spec]].op in COMPUTE_OPS:
        return SplitPoint(spec, "node", position[spec], spec)
    if root is not None and spec in dict(root.named_modules()):
        raise SplitError(
            f"module {spec!r} exists but never runs as its own call in the traced graph (it is unused, "
            "or inside a module traced as a leaf); split at a module that runs in forward"
        )
    module_names = list(calls)
    node_names = [n.name for n in nodes if n.op in COMPUTE_OPS]
    hint = close_matches(spec, module_names) or close_matches(spec, node_names)
    raise SplitError(
        f"unknown split {spec!r}: no module or fx node has that name{hint} "
        "(`decouple splits MODEL` lists the candidate split points)"
    )


def representation_of(tr: Trace, call: ModuleCall, position: dict[str, int], nodes: list[fx.Node]) -> str:
    """The node holding a module call's output (its first tensor if it returns several)."""
    recorded = tr.module_outputs.get(call.key)
    if recorded:
        tensors = [n for n in recorded if tensor_leaves(nodes[position[n]].meta.get("val"))]
        return (tensors or recorded)[0]
    inside = set(call.positions)
    escaping = [i for i in sorted(inside) if any(position[u.name] not in inside for u in nodes[i].users)]
    if not escaping:
        return nodes[call.last].name
    if call.last in escaping:
        return nodes[call.last].name
    return nodes[escaping[0]].name
