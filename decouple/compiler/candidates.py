"""Candidate split points and their costs: where ``convert(..., splits=N)`` may cut.

A candidate is a module call after which exactly one tensor crosses the cut: its output
dominates the model's output in the dataflow graph (every path from the inputs to the output
passes through it), so cutting there carries no skip connection. Side values (attention masks,
position ids, shapes: ``GraphView.side_values``) may cross beside it. Points inside a residual block
are never candidates; block boundaries are. Costs come from shape propagation: FLOPs per node
(``torch.utils.flop_counter`` on fake tensors) and parameters per node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError, SplitError
from ..frontend.trace import Trace
from .graph_view import GraphView, module_calls, parameters_read
from .splits import COMPUTE_OPS, representation_of

__all__ = ["Candidate", "candidate_splits", "candidates_for_stages", "node_costs", "CostKind"]

CostKind = Literal["flops", "params"]


@dataclass(frozen=True)
class Candidate:
    """A place to cut: after module ``name`` (and its ``aliases``, which end at the same node)."""

    name: str
    aliases: tuple[str, ...]
    position: int  # the cut falls after this graph position
    value: str  # the one value crossing the cut
    shape: tuple[int, ...]
    params_share: float  # share of parameters before the cut
    flops_share: float  # share of FLOPs before the cut


def node_costs(tr: Trace, root: nn.Module, kind: CostKind = "flops") -> list[float]:
    """Cost of each graph node in order: FLOPs from shape propagation, or parameters read first there."""
    nodes = list(tr.graph.nodes)
    if kind == "flops":
        flops = [float(n.meta.get("flops", 0)) for n in nodes]
        if sum(flops) > 0:
            return flops
        kind = "params"  # no FLOP counts (an op without a formula, or a real-tensor fallback)
    if kind != "params":
        raise ConfigError(f"unknown cost {kind!r}; use 'flops' or 'params'")
    seen: set[int] = set()
    costs = []
    for n in nodes:
        total = 0
        for _, p in parameters_read(n, root):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        costs.append(float(total))
    if sum(costs) == 0:
        return [1.0 if n.op in COMPUTE_OPS else 0.0 for n in nodes]
    return costs


def candidate_splits(tr: Trace, root: nn.Module) -> list[Candidate]:
    """Module calls after which a single tensor crosses, in forward order (one row per cut)."""
    view = GraphView(tr)
    nodes = view.nodes
    dominators = set(view.output_dominators())
    last_compute = max(i for i, n in enumerate(nodes) if n.op in COMPUTE_OPS)
    flops = node_costs(tr, root, "flops")
    params = node_costs(tr, root, "params")
    total_flops, total_params = sum(flops) or 1.0, sum(params) or 1.0

    by_position: dict[int, list[tuple[int, str, str]]] = {}
    for qualname, calls in module_calls(tr.graph).items():
        if len(calls) != 1:
            continue
        call = calls[0]
        rep = representation_of(tr, call, view.position, nodes)
        if rep not in dominators or view.position[rep] != call.last or call.last >= last_compute:
            continue
        value = nodes[view.position[rep]].meta.get("val")
        if not isinstance(value, torch.Tensor):
            continue
        depth = qualname.count(".")
        by_position.setdefault(call.last, []).append((depth, qualname, rep))

    result = []
    for position in sorted(by_position):
        names = sorted(by_position[position])  # outermost (shallowest) name first
        _, name, rep = names[0]
        value = nodes[view.position[rep]].meta["val"]
        result.append(
            Candidate(
                name=name,
                aliases=tuple(n for _, n, _ in names[1:]),
                position=position,
                value=rep,
                shape=tuple(int(s) for s in value.shape),
                params_share=sum(params[: position + 1]) / total_params,
                flops_share=sum(flops[: position + 1]) / total_flops,
            )
        )
    return result


def candidates_for_stages(tr: Trace, root: nn.Module, num_stages: Any) -> list[Candidate]:
    """The candidate split points, checked to be enough for ``splits=num_stages`` (an int >= 2)."""
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 2:
        raise ConfigError(f"splits={num_stages!r}: an int asks for that many stages and must be at least 2")
    candidates = candidate_splits(tr, root)
    if len(candidates) < num_stages - 1:
        raise SplitError(
            f"splits={num_stages} needs {num_stages - 1} split points but the model has only {len(candidates)} "
            f"places where a single tensor crosses ({', '.join(c.name for c in candidates) or 'none'}); ask for fewer "
            "stages or give module names explicitly"
        )
    return candidates
