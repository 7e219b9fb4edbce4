"""Graph views used by the partitioner and the split-point analysis.

:class:`GraphView` is a networkx view of an fx graph (one vertex per node, one edge per def-use):
which values depend on the inputs, which values cross a cut, which values are side values (masks,
shapes, devices) rather than activations, and the dominator chain of the output (the points where
a single value carries everything forward). :func:`module_calls` groups nodes by the module call
that ran them (from ``nn_module_stack``); :func:`parameters_read` lists the parameters a node reads.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable
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

    def activations(self) -> set[str]:
        """Values that carry the inputs forward: input-dependent, not side values, not attributes or the output."""
        return {
            name
            for name in self.input_dependent() - self.side_values()
            if self.by_name[name].op not in ("get_attr", "output")
        }

    def live_at(self, cuts: list[int], values: set[str], limit: int) -> dict[int, list[str] | None]:
        """For each cut position (a cut falls after it), the ``values`` defined at or before it and read
        after it; ``None`` where more than ``limit`` are."""
        spans = []
        for name in values:
            users = [self.position[u.name] for u in self.by_name[name].users]
            if users:
                spans.append((self.position[name], max(users), name))
        spans.sort()
        live: list[tuple[int, str]] = []  # a heap of (last reader, name)
        result: dict[int, list[str] | None] = {}
        i = 0
        for cut in sorted(cuts):
            while i < len(spans) and spans[i][0] <= cut:
                heapq.heappush(live, (spans[i][1], spans[i][2]))
                i += 1
            while live and live[0][0] <= cut:
                heapq.heappop(live)
            result[cut] = [name for _, name in live] if len(live) <= limit else None
        return result

    @functools.cached_property
    def batch_size(self) -> int | None:
        """The example batch size: the leading dimension of the first tensor input."""
        for n in self.nodes:
            value = n.meta.get("val") if n.op == "placeholder" else None
            leaves = tensor_leaves(value)
            if leaves and leaves[0].dim():
                return int(leaves[0].shape[0])
        return None

    def per_sample(self, name: str) -> bool:
        """Whether node ``name`` holds a floating-point tensor with one row per sample (the batch first)."""
        value = self.by_name[name].meta.get("val")
        batch = self.batch_size
        return (
            isinstance(value, torch.Tensor)
            and (value.is_floating_point() or value.is_complex())
            and value.dim() > 0
            and batch is not None
            and int(value.shape[0]) == batch
        )

    def beside(self, rep: str, crossing: Iterable[str], activations: set[str]) -> list[str] | None:
        """The per-sample tensors crossing a cut beside ``rep``, in graph order (floating-point activations
        with the batch first). ``None`` when a crossing activation is no tensor."""
        result = []
        for name in crossing:
            if name == rep or name not in activations:
                continue
            if not isinstance(self.by_name[name].meta.get("val"), torch.Tensor):
                return None
            if self.per_sample(name):
                result.append(name)
        return sorted(result, key=self.position.__getitem__)

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
