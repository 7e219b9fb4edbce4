"""Candidate split points and their costs: where ``convert(..., splits=N)`` may cut.

A candidate is a module call whose output crosses the cut after it, where the other values
crossing are side values (attention masks, position ids, shapes: ``GraphView.side_values``) or
values without the batch dimension (a position bias computed once). When the module's output is
the only activation crossing, it is a *single-tensor* point: no skip connection crosses, so points
inside a residual block are never single-tensor points; block boundaries are. A *multi-tensor* point
has other per-sample tensors crossing beside the module's output (the encoder's output beside the
decoder's hidden state, the class token beside the patch tokens, the streams of a two-branch
network): its local head pools each of them (``Candidate.crossing``). They are listed after the
single-tensor points, and ``splits=N`` uses them only when single-tensor points are too few.

No candidate cuts between two reads of one parameter (tied weights) or across a value computed
from parameters alone; candidates that end at the same place in the eval-mode graph are one.
Costs come from shape propagation: FLOPs per node and parameters per node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from ..errors import ConfigError, SplitError
from ..frontend.trace import Trace
from .graph_view import GraphView, module_calls, parameters_read
from .splits import COMPUTE_OPS, representation_of

__all__ = ["Candidate", "candidate_splits", "candidates_for_stages", "node_costs", "CostKind", "MAX_CROSSING"]

CostKind = Literal["flops", "params"]

#: the most per-sample tensors a multi-tensor point may have crossing (its output included)
MAX_CROSSING = 4


@dataclass(frozen=True)
class Candidate:
    """A place to cut: after module ``name`` (and its ``aliases``, which end at the same node)."""

    name: str
    aliases: tuple[str, ...]
    position: int  # the cut falls after this graph position
    value: str  # the module's output, which crosses the cut
    shape: tuple[int, ...]
    params_share: float  # share of parameters before the cut
    flops_share: float  # share of FLOPs before the cut
    crossing: tuple[str, ...] = ()  # other per-sample tensors crossing beside ``value`` (multi-tensor point)

    @property
    def tensors(self) -> int:
        """How many per-sample tensors cross the cut (1 for a single-tensor point)."""
        return 1 + len(self.crossing)


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
    # a get_attr node (how torch.export reads every parameter, all at the top of the graph) counts where
    # its first reader runs, so that "parameters before a cut" means those used before it
    position = {n: i for i, n in enumerate(nodes)}
    seen: set[int] = set()
    costs = [0.0] * len(nodes)
    for i, n in enumerate(nodes):
        at = min((position[u] for u in n.users), default=i) if n.op == "get_attr" else i
        for _, p in parameters_read(n, root):
            if id(p) not in seen:
                seen.add(id(p))
                costs[at] += p.numel()
    if sum(costs) == 0:
        return [1.0 if n.op in COMPUTE_OPS else 0.0 for n in nodes]
    return costs


def candidate_splits(
    tr: Trace, root: nn.Module, *, other: Trace | None = None, several: bool = False
) -> list[Candidate]:
    """Single-tensor points in forward order; with ``several``, then the multi-tensor points that have
    the fewest tensors crossing (see :func:`candidates_for_stages` for more). ``other``: the eval-mode
    trace, when it differs (points that cut it at the same place are one)."""
    single, multi, _ = _points(tr, root, other)
    if not several or not multi:
        return single
    fewest = min(c.tensors for c in multi)
    return single + [c for c in multi if c.tensors == fewest]


def candidates_for_stages(tr: Trace, root: nn.Module, num_stages: Any, other: Trace | None = None) -> list[Candidate]:
    """The candidate points ``splits=num_stages`` chooses among (an int >= 2), in forward order.

    The single-tensor points when they are enough; else multi-tensor points join them, those with
    the fewest tensors crossing first, until there are enough.
    """
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 2:
        raise ConfigError(f"splits={num_stages!r}: an int asks for that many stages and must be at least 2")
    single, multi, excluded = _points(tr, root, other)
    chosen = list(single)
    for level in sorted({c.tensors for c in multi}):
        if len(chosen) >= num_stages - 1:
            break
        chosen += [c for c in multi if c.tensors == level]
    if len(chosen) < num_stages - 1:
        listed = ", ".join(c.name for c in single) or "none"
        several = f", and {len(multi)} where several do" if multi else ""
        why = (
            f". Other module boundaries cannot be cut, as a stage owns its parameters and tied weights cannot "
            f"cross a cut: {'; '.join(excluded[:3])}"
            if excluded
            else ""
        )
        raise SplitError(
            f"splits={num_stages} needs {num_stages - 1} split points but the model has only {len(single)} "
            f"places where a single tensor crosses ({listed}){several}{why}; ask for fewer stages or give module "
            "names explicitly"
        )
    return sorted(chosen, key=lambda c: c.position)


def _points(tr: Trace, root: nn.Module, other: Trace | None) -> tuple[list[Candidate], list[Candidate], list[str]]:
    """(single-tensor points, multi-tensor points), each in forward order, one per place in both modes,
    and why module boundaries that would have been points are not (a shared parameter, ...)."""
    view = GraphView(tr)
    nodes = view.nodes
    compute = [i for i, n in enumerate(nodes) if n.op in COMPUTE_OPS]
    if not compute:
        return [], [], []
    last_compute = compute[-1]
    activations = view.activations()
    blocked = _blocked_cuts(view, root)
    excluded: dict[str, None] = {}
    by_position: dict[int, list[tuple[int, str, str]]] = {}
    for qualname, calls in module_calls(tr.graph).items():
        if len(calls) != 1:
            continue
        call = calls[0]
        rep = representation_of(tr, call, view.position, nodes)
        if view.position[rep] != call.last or call.last >= last_compute:
            continue
        if call.last in blocked:
            excluded.setdefault(blocked[call.last], None)
            continue
        if rep in activations and view.per_sample(rep):
            by_position.setdefault(call.last, []).append((qualname.count("."), qualname, rep))
    crossing = view.live_at(sorted(by_position), activations, limit=4 * MAX_CROSSING)
    eval_cuts = _eval_positions(other) if other is not None else None
    flops = _prefix(node_costs(tr, root, "flops"))
    params = _prefix(node_costs(tr, root, "params"))
    single: list[Candidate] = []
    multi: list[Candidate] = []
    seen_eval: set[int] = set()
    for position in sorted(by_position):
        names = sorted(by_position[position])  # outermost (shallowest) name first
        _, name, rep = names[0]
        value = nodes[position].meta["val"]
        live = crossing.get(position)
        others = view.beside(rep, live, activations) if live is not None and rep in live else None
        if others is None:
            continue
        if eval_cuts is not None:
            at = next((eval_cuts[n] for _, n, _ in names if n in eval_cuts), None)
            if at is None or at in seen_eval:
                continue  # the module does not run in eval mode, or it cuts where an earlier point does
            seen_eval.add(at)
        point = Candidate(
            name=name,
            aliases=tuple(n for _, n, _ in names[1:]),
            position=position,
            value=rep,
            shape=tuple(int(s) for s in value.shape),
            params_share=params[position + 1] / (params[-1] or 1.0),
            flops_share=flops[position + 1] / (flops[-1] or 1.0),
            crossing=tuple(others),
        )
        (multi if others else single).append(point)
    return single, [c for c in multi if c.tensors <= MAX_CROSSING], list(excluded)


def _prefix(costs: list[float]) -> list[float]:
    total = [0.0]
    for c in costs:
        total.append(total[-1] + c)
    return total


def _eval_positions(other: Trace) -> dict[str, int]:
    """Where each module called once ends in the eval-mode graph."""
    return {q: calls[0].last for q, calls in module_calls(other.graph).items() if len(calls) == 1}


def _blocked_cuts(view: GraphView, root: nn.Module) -> dict[int, str]:
    """Positions after which no cut may fall, with the reason: between two reads of one parameter, or
    across a value computed from parameters alone (the partition refuses both: ``TiedParameterError``)."""
    nodes = view.nodes
    position = view.position
    dependent = view.input_dependent()
    spans: dict[int, list[Any]] = {}
    for i, n in enumerate(nodes):
        readers = [position[u.name] for u in n.users] if n.op == "get_attr" else [i]
        for pname, param in parameters_read(n, root):
            span = spans.setdefault(id(param), [min(readers or [i]), max(readers or [i]), pname])
            span[0], span[1] = min(span[0], *readers), max(span[1], *readers)
    intervals = [(lo, hi, f"parameter {name!r} is used on both sides") for lo, hi, name in spans.values() if lo < hi]
    # values that do not depend on the inputs move to their first reader; those read from parameters
    # may not cross a cut afterwards
    moved: dict[str, int] = {}
    from_params: set[str] = set()
    for n in reversed(nodes):
        if n.op in ("placeholder", "output", "get_attr") or n.name in dependent or not n.users:
            continue
        moved[n.name] = max(position[n.name], min(moved.get(u.name, position[u.name]) for u in n.users))
    for n in nodes:
        if n.name in moved and (
            parameters_read(n, root) or any(a.name in from_params or (a.op == "get_attr" and parameters_read(a, root))
                                            for a in n.all_input_nodes)
        ):  # fmt: skip
            from_params.add(n.name)
            last = max(moved.get(u.name, position[u.name]) for u in n.users)
            intervals.append(
                (moved[n.name], last, f"value {n.name!r}, computed from parameters alone, is used on both sides")
            )
    blocked: dict[int, str] = {}
    for lo, hi, why in intervals:
        blocked.update(dict.fromkeys(range(lo, hi), why))
    return blocked
