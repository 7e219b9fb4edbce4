"""Partition a traced graph into contiguous stages at split points.

A split names a module (``"layer2"``, ``"features.7"``) or an fx node; the cut falls right after
the last node the module's call runs. Every node then belongs to one stage by graph order, with
two refinements: ``get_attr`` nodes are re-read by each stage that uses them, and values that do
not depend on the model's inputs (constants, tensors computed only from parameters) move to the
stage that uses them, so they never cross a cut without their gradient.

The values that cross cut ``k`` (``Partition.boundaries[k]``) are the edges of a networkx view
of the graph that leave stages ``<= k`` for stages ``> k``: skip connections, masks and shapes
computed early are carried across, never recomputed and never dropped.

Index letters: ``k`` a stage or the cut after it, ``i`` a node's position in graph order.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from torch import nn

from ..errors import SplitError, TiedParameterError, attribute_code
from ..frontend.trace import Trace
from ..tree import tensor_leaves
from .graph_view import GraphView, ModuleCall, module_calls, parameters_read
from .splits import COMPUTE_OPS, SplitPoint

__all__ = ["StagePlan", "Partition", "partition"]


@dataclass
class StagePlan:
    """What one stage computes and exchanges.

    ``nodes``: graph nodes it runs, in graph order (``get_attr`` nodes it reads included).
    ``inputs``: message values it reads; ``outputs``: values it produces that later stages read.
    ``representation``: the value its local head reads (``None`` for the last stage).
    ``crossing``: the other per-sample tensors crossing the cut after it, which its local head
    reads beside the representation (a multi-tensor cut; passes may clear it).
    """

    index: int
    nodes: list[str]
    inputs: list[str]
    outputs: list[str]
    representation: str | None
    split: SplitPoint | None
    modules: list[str] = field(default_factory=list)  # top-level module scopes it covers, in order
    crossing: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        ends = f", ends at {self.split.spec!r}" if self.split else ""
        return f"StagePlan({self.index}: {len(list(self.nodes))} nodes, in={self.inputs}, out={self.outputs}{ends})"


@dataclass
class Partition:
    """A traced graph cut into stages.

    ``boundaries[k]``: the values crossing the cut after stage ``k``, in graph order; this is the
    message stage ``k`` hands to stage ``k + 1`` (pass-through values included).
    ``stage_of``: owning stage per node name (``-1`` for graph inputs; ``get_attr`` nodes map to
    their first reader).
    """

    trace: Trace
    splits: list[SplitPoint]
    stages: list[StagePlan]
    boundaries: list[list[str]]
    inputs: list[str]
    stage_of: dict[str, int]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def message_into(self, k: int) -> list[str]:
        """Names of the message values stage ``k`` receives."""
        return list(self.inputs) if k == 0 else list(self.boundaries[k - 1])

    def __repr__(self) -> str:
        lines = [f"Partition({self.num_stages} stages)"]
        for s in self.stages:
            lines.append(f"  {s!r}")
        return "\n".join(lines)


def partition(tr: Trace, splits: list[SplitPoint], root: nn.Module) -> Partition:
    """Cut the traced graph at ``splits`` into ``len(splits) + 1`` stages and find their messages."""
    view = GraphView(tr)
    nodes = view.nodes
    cuts = [s.cut for s in splits]
    num_stages = len(splits) + 1
    last = num_stages - 1

    stage_of: dict[str, int] = {}
    for i, n in enumerate(nodes):
        if n.op == "placeholder":
            stage_of[n.name] = -1
        elif n.op == "output":
            stage_of[n.name] = last
        else:
            stage_of[n.name] = bisect.bisect_left(cuts, i)

    dependent = view.input_dependent()
    for n in reversed(nodes):  # users first, so a chain of constants moves together
        if n.op in ("placeholder", "output") or n.name in dependent or not n.users:
            continue
        stage_of[n.name] = max(stage_of[n.name], min(stage_of[u.name] for u in n.users))

    stage_nodes: list[list[str]] = [[] for _ in range(num_stages)]
    for n in nodes:
        if n.op == "get_attr":
            for k in sorted({stage_of[u.name] for u in n.users}):
                stage_nodes[k].append(n.name)
            if n.users:
                stage_of[n.name] = min(stage_of[u.name] for u in n.users)
        elif n.op not in ("placeholder", "output"):
            stage_nodes[stage_of[n.name]].append(n.name)

    for k, names in enumerate(stage_nodes):
        if not any(view.by_name[x].op in COMPUTE_OPS for x in names):
            raise SplitError(_empty_stage_message(k, splits, num_stages))

    boundaries = [view.crossing(stage_of, k) for k in range(num_stages - 1)]
    inputs = [n.name for n in nodes if n.op == "placeholder"]
    calls = module_calls(tr.graph)
    activations = view.activations()

    stages: list[StagePlan] = []
    for k in range(num_stages):
        incoming = inputs if k == 0 else boundaries[k - 1]
        mine = set(stage_nodes[k])
        reads = {a.name for x in mine for a in view.by_name[x].all_input_nodes} | (
            {a.name for a in nodes[-1].all_input_nodes} if k == last else set()
        )
        stage_inputs = [v for v in incoming if v in reads and v not in mine]
        outputs = [v for v in boundaries[k] if v in mine] if k < last else []
        split = splits[k] if k < last else None
        stages.append(
            StagePlan(
                index=k,
                nodes=stage_nodes[k],
                inputs=stage_inputs,
                outputs=outputs,
                representation=split.representation if split else None,
                split=split,
                modules=_top_modules(view, stage_nodes[k], calls),
                crossing=(view.beside(split.representation, boundaries[k], activations) or []) if split else [],
            )
        )

    result = Partition(tr, splits, stages, boundaries, inputs, stage_of)
    _verify_representations(result, view)
    _verify_parameter_ownership(result, view, root, dependent)
    return result


def _untie(name: str) -> str:
    """Python that gives parameter ``name`` of ``model`` its own copy (valid for any dotted name)."""
    code = attribute_code("model", name)
    if code.startswith("getattr("):  # a name Python cannot assign with a dot: setattr on its owner
        owner, _, attr = name.rpartition(".")
        holder = f"model.get_submodule({owner!r})" if owner else "model"
        return f"setattr({holder}, {attr!r}, nn.Parameter({code}.detach().clone()))"
    return f"{code} = nn.Parameter({code}.detach().clone())"


def _empty_stage_message(k: int, splits: list[SplitPoint], num_stages: int) -> str:
    if k == 0:
        return f"split {splits[0].spec!r} leaves stage 0 empty: nothing is computed before it; drop it or split later"
    if k == num_stages - 1:
        return (
            f"split {splits[-1].spec!r} leaves the last stage empty: nothing is computed after it; "
            "drop it or split earlier"
        )
    return f"splits {splits[k - 1].spec!r} and {splits[k].spec!r} leave stage {k} between them empty; drop one of them"


def _top_modules(view: GraphView, names: list[str], calls: dict[str, list[ModuleCall]]) -> list[str]:
    """The outermost module calls that run entirely inside a stage, in order of first appearance."""
    inside = {view.position[x] for x in names}
    covered = {
        call.key: qualname for qualname, group in calls.items() for call in group if set(call.positions) <= inside
    }
    seen: dict[str, None] = {}
    for x in names:
        for key in view.by_name[x].meta.get("nn_module_stack") or {}:
            if key in covered:
                seen.setdefault(covered[key], None)
                break
    return list(seen)


def _verify_representations(p: Partition, view: GraphView) -> None:
    for k, split in enumerate(p.splits):
        rep = split.representation
        if rep not in p.boundaries[k]:
            raise SplitError(
                f"split {split.spec!r} does not cut the graph: its output {rep!r} is not used after the cut, "
                "so the stages would not be connected through it. Split at a module on the main path "
                "(`decouple splits MODEL` lists candidates)"
            )
        if p.stage_of[rep] != k:
            raise SplitError(
                f"split {split.spec!r} ends stage {k}, but its output {rep!r} is computed in stage {p.stage_of[rep]}, "
                f"so stage {k}'s local head would train on a value another stage produced. Each stage's head reads "
                f"a value the stage computes: drop {split.spec!r} or the split before it, or split elsewhere"
            )
        if not tensor_leaves(view.by_name[rep].meta.get("val")):
            raise SplitError(
                f"split {split.spec!r} outputs no tensor (its value is {type(view.by_name[rep].meta.get('val')).__name__}); "
                "a local head needs a tensor representation: split at a module that returns one"
            )


def _readers(view: GraphView, x: str, plan: StagePlan) -> list[str]:
    """The nodes of ``plan`` that read a parameter through node ``x``: ``x`` itself, or a get_attr's users."""
    node = view.by_name[x]
    if node.op != "get_attr":
        return [x]
    mine = set(plan.nodes)
    return [u.name for u in node.users if u.name in mine] or [x]


def _verify_parameter_ownership(p: Partition, view: GraphView, root: nn.Module, dependent: set[str]) -> None:
    """Each parameter must be read by exactly one stage, and no parameter-only value may cross a cut."""
    users: dict[int, dict[int, list[str]]] = {}
    names: dict[int, list[str]] = {}
    for plan in p.stages:
        for x in plan.nodes:
            for pname, param in parameters_read(view.by_name[x], root):
                users.setdefault(id(param), {}).setdefault(plan.index, []).extend(_readers(view, x, plan))
                names.setdefault(id(param), [])
                if pname not in names[id(param)]:
                    names[id(param)].append(pname)
    registered: dict[int, list[str]] = {}
    for pname, param in root.named_parameters(remove_duplicate=False):
        registered.setdefault(id(param), []).append(pname)
    for pid, by_stage in users.items():
        if len(by_stage) > 1:
            # every name the parameter is registered under (torch.export reads tied weights under one name)
            aliases = names[pid] + [a for a in registered.get(pid, []) if a not in names[pid]]
            where = "; ".join(f"stage {k} (node {', '.join(v[:3])})" for k, v in sorted(by_stage.items()))
            also = f" (also registered as {', '.join(repr(a) for a in aliases[1:])})" if len(aliases) > 1 else ""
            raise TiedParameterError(
                f"parameter {aliases[0]!r}{also} is used by more than one stage: {where}. "
                "A stage owns its parameters, and tied weights cannot cross a cut. Fix: move the splits so every "
                "use falls in one stage, or untie the weights before convert(), e.g. "
                f"`{_untie(aliases[-1])}`"
            )
    param_nodes = {n.name for n in view.nodes if n.op in ("get_attr", "call_module") and parameters_read(n, root)}
    for _k, crossing in enumerate(p.boundaries):
        for x in crossing:
            if x in dependent:
                continue
            sources = (view.ancestors(x) | {x}) & param_nodes
            if sources:
                src = ", ".join(sorted(sources))
                readers = sorted({p.stage_of[u.name] for u in view.by_name[x].users})
                raise TiedParameterError(
                    f"value {x!r} is computed from parameters only ({src}) in stage {p.stage_of[x]} and read by "
                    f"stages {readers}; across a cut it would be detached and silently lose its gradient. Fix: move "
                    "the splits so its readers share one stage, or compute it separately in each stage"
                )
