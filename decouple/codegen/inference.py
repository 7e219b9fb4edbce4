"""The inference module: the eval-mode graph of the kept stages, stitched back together without the detaches.

Plus the method's inference tail where it has one (associated learning's bridge and decoders, or
an early exit's classifier). The live module shares parameters with the training stages;
:func:`snapshot` makes the independent eval-mode copy users get.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
import torch.fx as fx
from torch import nn

from ..compiler.program import Program
from ..frontend.attributes import attribute, qualified_target
from .stage import Stage
from .stages import copy_meta

__all__ = ["build_inference_module", "snapshot"]

M = TypeVar("M", bound=nn.Module)


def build_inference_module(program: Program, stages: list[Stage], exit: int | None = None) -> fx.GraphModule:
    """The eval-mode inference module through the first ``exit`` stages (live: shares parameters).

    ``exit=None`` takes the method's default path: the whole model, or for associated learning
    the encoders, the last bridge and the decoders.
    """
    part = program.partitions[False]
    num = part.num_stages
    stop = program.default_exit if exit is None else exit
    stop = num if stop is None else stop
    tail = program.tails.get(stop)
    source = part.trace.nodes

    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    objects: dict[str, Any] = {}
    for node in part.trace.graph.nodes:
        if node.op == "placeholder":
            env[node.name] = graph.node_copy(node, lambda a: env[a.name])
            copy_meta(env[node.name], node)
    for k in range(stop):
        stage_module = stages[k].eval_module
        for name in part.stages[k].nodes:
            node = source[name]
            if name in env:
                continue
            env[name] = graph.node_copy(node, lambda a: env[a.name])
            copy_meta(env[name], node)
            if node.op in ("call_module", "get_attr"):
                objects[qualified_target(node)] = attribute(stage_module, qualified_target(node))
    if tail is None:
        assert stop == num, "an early exit needs an inference tail"
        graph.output(fx.node.map_arg(part.trace.output_node().args[0], lambda a: env[a.name]))
    else:
        plan = part.stages[stop - 1]
        assert plan.representation is not None, "an inference tail reads the representation of a stage before the last"
        value: fx.node.Argument = env[plan.representation]
        if plan.crossing:  # a multi-tensor cut: the head reads every crossing tensor
            value = tuple(env[name] for name in [plan.representation, *plan.crossing])
        for i, (name, module) in enumerate(tail.modules):
            kwargs: dict[str, fx.node.Argument] = {k: env[v] for k, v in tail.extras.items()} if i == 0 else {}
            value = graph.call_module(name, (value,), kwargs)
            objects[name] = module
        graph.output(value)
    graph.lint()
    # No gm.eval() here: the live module shares its leaf modules with the training stages, and
    # switching them would put batch norm and dropout of a model in training into eval mode.
    # snapshot() switches its independent copy instead.
    return fx.GraphModule(objects, graph, class_name=_class_name(program))


def _class_name(program: Program) -> str:
    return f"{type(program.root).__name__}Inference"


def snapshot(module: M, device: torch.device | str | None) -> M:
    """An independent copy of a live module on one device, in eval mode."""
    copied = copy.deepcopy(module)
    if device is not None:
        copied.to(device)
    return copied.eval()
