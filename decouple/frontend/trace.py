"""The traced graph of a model in one training mode, as every frontend hands it to the compiler.

A :class:`Trace`'s nodes carry ``meta["nn_module_stack"]`` (the module calls they run inside, with
``@N`` suffixes for repeated calls) and, after :func:`~decouple.frontend.propagate.propagate`,
``meta["val"]`` (fake tensors or plain values) and ``meta["flops"]``. Nodes are looked up by name
through an index built once, not by scanning the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch.fx as fx

from .inputs import InputSpec

__all__ = ["Trace", "TracerName", "DYNAMIC_SIZES", "call_key", "split_call_key"]

TracerName = Literal["auto", "fx", "export"]

#: which input sizes a torch.export trace keeps dynamic: every dimension, the batch dimension, none
DYNAMIC_SIZES = ("all", "batch", "none")


def call_key(qualname: str, index: int) -> str:
    """The ``nn_module_stack`` key of a module's ``index``-th call: ``"block"``, then ``"block@1"``, ..."""
    return f"{qualname}@{index}" if index else qualname


def split_call_key(key: str) -> tuple[str, int]:
    """``(name, index)`` of a call key, the inverse of :func:`call_key` (``"block@1"`` -> ``("block", 1)``)."""
    base, at, count = key.rpartition("@")
    return (base, int(count)) if at and count.isdigit() else (key, 0)


@dataclass
class Trace:
    """One traced graph of a model in one training mode.

    ``module_outputs`` maps a module-call key (``"layer1"``, ``"block@1"``) to the names of
    the nodes it returned, in return order, when the frontend could observe them.
    ``mode_readers``: the modules whose ``training`` flag the trace read (``None``: not recorded);
    when it is empty, the model traces to the same graph in the other mode.
    """

    graph_module: fx.GraphModule
    training: bool
    inputs: InputSpec
    frontend: str
    module_outputs: dict[str, list[str]] = field(default_factory=dict)
    mode_readers: set[str] | None = None
    _index: dict[str, fx.Node] = field(default_factory=dict, init=False, repr=False, compare=False)
    _positions: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph

    @property
    def nodes(self) -> dict[str, fx.Node]:
        """Every node by name, in graph order (indexed on first use, again if the graph grew or shrank)."""
        self._refresh_index()
        return self._index

    def node(self, name: str) -> fx.Node:
        """The node called ``name`` (``KeyError`` when there is none)."""
        return self.nodes[name]

    @property
    def positions(self) -> dict[str, int]:
        """Each node's index in graph order, by name."""
        self._refresh_index()
        return self._positions

    def output_node(self) -> fx.Node:
        """The graph's ``output`` node."""
        return next(n for n in reversed(self.graph.nodes) if n.op == "output")

    def _refresh_index(self) -> None:
        if len(self._index) != len(self.graph.nodes):
            self._index = {n.name: n for n in self.graph.nodes}
            self._positions = {name: i for i, name in enumerate(self._index)}
