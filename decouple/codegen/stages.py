"""Generate the stage modules of a compiled program: one ``fx.GraphModule`` per stage and training mode.

Stage modules are built from the original graph with the node-copy idiom and keep the original
qualified names of submodules and parameters, so their state dicts map straight back onto the
user's model. A stage module takes the message values it reads as arguments (detached, or
cloned where an in-place op follows, as the detach pass decided) and returns a dict of the
values later stages read; the last stage returns exactly what the model returns.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..compiler.partition import Partition, StagePlan
from ..compiler.program import Program, StageSpec
from ..frontend.attributes import qualified_target
from ..objectives.base import LocalObjective
from ..tree import clone_tree, detach_tree
from .stage import Stage, StageIO

__all__ = ["build_stages", "build_stage_module", "place", "describe_value", "copy_meta"]

_KEEP_META = ("nn_module_stack", "stack_trace", "source_fn_stack", "seq_nr")


def copy_meta(dst: fx.Node, src: fx.Node) -> None:
    dst.meta = {k: v for k, v in src.meta.items() if k in _KEEP_META}


def build_stage_module(program: Program, spec: StageSpec, training: bool, root: Any) -> fx.GraphModule:
    """The generated component module of one stage in one training mode."""
    part = program.partitions[training]
    plan = spec.plans[training]
    policy = spec.policies[training]
    nodes = part.trace.nodes

    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for name in plan.inputs:
        placeholder = graph.placeholder(name)
        copy_meta(placeholder, nodes[name])
        env[name] = _apply_policy(graph, placeholder, policy.get(name, "keep"), nodes[name])
    for name in plan.nodes:
        env[name] = graph.node_copy(nodes[name], lambda a: env[a.name])
        copy_meta(env[name], nodes[name])
    if plan.index == part.num_stages - 1:
        graph.output(fx.node.map_arg(part.trace.output_node().args[0], lambda a: env[a.name]))
    else:
        graph.output({name: env[name] for name in plan.outputs})
    graph.lint()
    return fx.GraphModule(root, graph, class_name=f"Stage{plan.index}")


def _apply_policy(graph: fx.Graph, value: fx.Node, policy: str, original: fx.Node) -> fx.Node:
    if policy == "keep":
        return value
    tensor = isinstance(original.meta.get("val"), torch.Tensor)
    if tensor:
        detached = graph.call_method("detach", (value,))
        return graph.call_method("clone", (detached,)) if policy == "clone" else detached
    return graph.call_function(clone_tree if policy == "clone" else detach_tree, (value,))


def _stage_targets(part: Partition, plan: StagePlan) -> list[tuple[str, str]]:
    nodes = part.trace.nodes
    return [(nodes[x].op, qualified_target(nodes[x])) for x in plan.nodes if nodes[x].op in ("call_module", "get_attr")]


def place(root: nn.Module, targets: list[tuple[str, str]], device: torch.device) -> None:
    """Move the submodules and attributes a stage reads onto its device, in place in ``root``."""
    for op, target in targets:
        if op == "call_module":
            root.get_submodule(target).to(device)
            continue
        prefix, _, name = target.rpartition(".")
        owner = root.get_submodule(prefix) if prefix else root
        value = getattr(owner, name)
        if isinstance(value, nn.Parameter):
            if value.device != device:
                value.data = value.data.to(device)
        elif isinstance(value, nn.Module):
            value.to(device)
        elif isinstance(value, torch.Tensor) and value.device != device:
            if name in owner._buffers:
                owner._buffers[name] = value.to(device)
            else:
                setattr(owner, name, value.to(device))


def describe_value(value: Any) -> Any:
    """A light summary of an example value: ``torch.Size`` for tensors, the value for small Python data."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), str(value.dtype).replace("torch.", ""))
    if isinstance(value, (tuple, list)):
        return type(value)(describe_value(v) for v in value)
    if isinstance(value, dict):
        return {k: describe_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (int, float, bool, str, torch.Size)):
        return value
    return type(value).__name__


def _stage_io(program: Program, spec: StageSpec, training: bool) -> StageIO:
    part = program.partitions[training]
    plan = spec.plans[training]
    nodes = part.trace.nodes
    last = plan.index == part.num_stages - 1
    message_out = [] if last else list(part.boundaries[plan.index])
    shapes = {name: describe_value(nodes[name].meta.get("val")) for name in [*plan.inputs, *message_out]}
    return StageIO(
        list(plan.inputs), list(plan.outputs), message_out, plan.representation, last, shapes, list(plan.crossing)
    )


def build_stages(program: Program) -> list[Stage]:
    """Generate every stage of the program, placing each on its device."""
    root = program.root
    shared = program.partitions[True] is program.partitions[False]
    stages = []
    for spec in program.stages:
        targets = _stage_targets(program.partitions[True], spec.plans[True])
        if not shared:
            targets += _stage_targets(program.partitions[False], spec.plans[False])
        place(root, targets, spec.device)
        train_module = build_stage_module(program, spec, True, root)
        eval_module = train_module if shared else build_stage_module(program, spec, False, root)
        objective = _objective(spec)
        io = {mode: _stage_io(program, spec, mode) for mode in (True, False)}
        stages.append(Stage(spec.index, train_module, eval_module, objective, io, spec.device, spec.objective_extras))
    return stages


def _objective(spec: StageSpec) -> LocalObjective | None:
    """The stage's objective on the stage's device; a method's passes must attach a :class:`LocalObjective`."""
    if spec.objective is None:
        return None
    assert isinstance(spec.objective, LocalObjective), f"stage {spec.index}'s objective is not a LocalObjective"
    return spec.objective.to(spec.device)
