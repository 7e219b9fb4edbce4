"""Graph views used by the partitioner and the split-point analysis.

:class:`GraphView` is a networkx view of an fx graph (one vertex per node, one edge per def-use):
which values depend on the inputs, which values cross a cut, which values are side values (masks,
shapes, devices) rather than activations, and the dominator chain of the output (the points where
a single value carries everything forward). :func:`module_calls` groups nodes by the module call
that ran them (from ``nn_module_stack``); :func:`parameters_read` lists the parameters a node reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
from torch import nn

from ..frontend.attributes import attribute, qualified_target
from ..frontend.trace import Trace
from ..tree import tensor_leaves

__all__ = ["ModuleCall", "GraphView", "module_calls", "parameters_read"]


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module in the graph: the positions of the nodes it ran."""

    key: str  # "layer1", or "block@1" for the second call of "block"
    qualname: str
    positions: tuple[int, ...]

    @property
    def last(self) -> int:
        return max(self.positions)


class GraphView:
    """A networkx view of an fx graph: one vertex per node name, one edge per def-use."""

    def __init__(self, tr: Trace) -> None:
        self.graph = tr.graph
        self.by_name = tr.nodes
        self.nodes = list(self.by_name.values())
        self.position = tr.positions
        self.digraph: nx.DiGraph[str] = nx.DiGraph()
        self.digraph.add_nodes_from(n.name for n in self.nodes)
        self.digraph.add_edges_from((n.name, u.name) for n in self.nodes for u in n.users)

    def input_dependent(self) -> set[str]:
        """Nodes whose value depends on a graph input (placeholder)."""
        seen: set[str] = set()
        for n in self.nodes:
            if n.op == "placeholder":
                seen.add(n.name)
                seen |= nx.descendants(self.digraph, n.name)
        return seen

    def ancestors(self, name: str) -> set[str]:
        return nx.ancestors(self.digraph, name)

    def crossing(self, stage_of: dict[str, int], k: int) -> list[str]:
        """Values defined in stages ``<= k`` and read by stages ``> k``, in graph order."""
        out = {u for u, v in self.digraph.edges if self.by_name[u].op != "get_attr" and stage_of[u] <= k < stage_of[v]}
        return sorted(out, key=self.position.__getitem__)

    def side_values(self) -> set[str]:
        """Values that are not activations: sizes and devices, and what is computed without parameters
        from inputs that hold no floating-point tensor.

        Attention masks (even a float additive one built from an integer mask), position ids and
        shapes: carried to the stages that read them, without gradient, so they do not make a cut
        point "skip" anything.
        """
        side: set[str] = set()
        for n in self.nodes:
            if n.op in ("get_attr", "call_module", "output"):
                continue
            value = n.meta.get("val", _UNKNOWN)
            if n.op == "placeholder":
                if not _holds_float(value):
                    side.add(n.name)
            elif value is not _UNKNOWN and not tensor_leaves(value):
                side.add(n.name)  # shapes, sizes, ``x.device``: metadata of a value, not data flowing on
            elif n.all_input_nodes and all(
                a.name in side or (a.op == "get_attr" and not _is_parameter_like(a)) for a in n.all_input_nodes
            ):
                side.add(n.name)
        return side

    def output_dominators(self) -> list[str]:
        """Nodes every path from the inputs to the output passes through, in graph order.

        These are the single-value cut points of the dataflow graph; side values (masks, position
        ids, shapes: see :meth:`side_values`) may cross beside them.
        """
        source = "__decouple_source__"
        g = self.digraph.subgraph(self.input_dependent() - self.side_values()).copy()
        entries = [n for n in g if g.in_degree(n) == 0]
        g.add_node(source)
        g.add_edges_from((source, n) for n in entries)
        output = next(n.name for n in reversed(self.nodes) if n.op == "output")
        if output not in g:
            return []
        idom = nx.immediate_dominators(g, source)
        chain = []
        v = idom.get(output)
        while v is not None and v != source:
            chain.append(v)
            nxt = idom.get(v)
            if nxt == v:
                break
            v = nxt
        return sorted(chain, key=self.position.__getitem__)


_UNKNOWN = object()


def _holds_float(value: Any) -> bool:
    """Whether a node's example value holds a floating-point tensor (unknown values count as float)."""
    if value is _UNKNOWN:
        return True
    return any(t.is_floating_point() or t.is_complex() for t in tensor_leaves(value))


def _is_parameter_like(node: fx.Node) -> bool:
    """A ``get_attr`` that may read a parameter: anything but an integer or boolean tensor constant."""
    return _holds_float(node.meta.get("val", _UNKNOWN))


def module_calls(graph: fx.Graph) -> dict[str, list[ModuleCall]]:
    """Every module call in the graph, grouped by module qualified name."""
    positions: dict[str, list[int]] = {}
    qualname_of: dict[str, str] = {}
    for i, node in enumerate(graph.nodes):
        for key, value in (node.meta.get("nn_module_stack") or {}).items():
            qualname = value[0] if isinstance(value, tuple) else str(value)
            if not qualname:
                continue
            positions.setdefault(key, []).append(i)
            qualname_of[key] = qualname
    calls: dict[str, list[ModuleCall]] = {}
    for key, pos in positions.items():
        calls.setdefault(qualname_of[key], []).append(ModuleCall(key, qualname_of[key], tuple(pos)))
    for qualname in calls:
        calls[qualname].sort(key=lambda c: c.last)
    return calls


def parameters_read(node: fx.Node, root: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters a node reads directly: those of a called module, or a ``get_attr`` parameter."""
    if node.op == "call_module":
        target = qualified_target(node)
        return [(f"{target}.{n}", p) for n, p in root.get_submodule(target).named_parameters()]
    if node.op == "get_attr":
        target = qualified_target(node)
        value = attribute(root, target)
        if isinstance(value, nn.Parameter):
            return [(target, value)]
        if isinstance(value, nn.Module):
            return [(f"{target}.{n}", p) for n, p in value.named_parameters()]
    return []
