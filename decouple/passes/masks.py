"""Attention masks for local heads on sequences: which value is the mask, and carrying it to a stage.

A head that pools a sequence ``(N, T, D)`` over its real tokens needs the ``(N, T)`` mask. The
mask is usually a model input (``attention_mask``) that only the first stage reads, so it is not
in the message later stages receive; :func:`carry_value` adds it to every message up to the
stage that needs it (it crosses the cuts like any other carried value: computed once, never
recomputed, never given a gradient). The stage objective then gets it as a keyword argument
through ``StageSpec.objective_extras``.

How the mask is found (the ``mask`` option of the methods that pool):
``"auto"`` (default) takes the ``forward`` argument named ``attention_mask`` when it is an input
of the traced model and its shape fits the representation, else no mask; a string names a
``forward`` argument or a graph node; ``None`` never uses a mask.
"""

from __future__ import annotations

from typing import Any

import torch

from ..compiler.program import Program
from ..errors import ConfigError, close_matches

__all__ = ["AUTO_MASK_NAME", "find_mask", "carry_value"]

#: the forward argument ``mask="auto"`` looks for
AUTO_MASK_NAME = "attention_mask"


def find_mask(program: Program, k: int, option: Any, example: torch.Tensor) -> str | None:
    """The name of the message value holding the mask for stage ``k``'s sequence ``example``, or ``None``."""
    if option is None or option is False:
        return None
    if not isinstance(option, str):
        raise ConfigError(f"mask must be 'auto', None, or the name of an input or graph node, got {option!r}")
    explicit = option != "auto"
    name = _resolve(program, option if explicit else AUTO_MASK_NAME, explicit)
    if name is None:
        return None
    problem = _shape_problem(program, name, example, k)
    if problem is None:
        return name
    if explicit:
        raise ConfigError(f"mask={option!r} cannot mask stage {k}'s representation: {problem}")
    program.notes.append(f"stage {k}: input {AUTO_MASK_NAME!r} not used to pool the representation ({problem})")
    return None


def _resolve(program: Program, wanted: str, explicit: bool) -> str | None:
    """Map an argument name or node name to a value name present in every traced mode."""
    traces = {id(p.trace): p.trace for p in program.partitions.values()}.values()
    names = []
    for tr in traces:
        if wanted in tr.inputs.placeholders:
            names.append(tr.inputs.placeholders[wanted])
        elif any(n.name == wanted and n.op != "get_attr" for n in tr.graph.nodes):
            names.append(wanted)
        else:
            break
    else:
        if len(set(names)) == 1:
            return names[0]
    if not explicit:
        return None
    tr = program.partitions[True].trace
    candidates = list(tr.inputs.placeholders) + [n.name for n in tr.graph.nodes]
    raise ConfigError(
        f"mask={wanted!r} is neither an input of the traced model (inputs: {list(tr.inputs.placeholders)}) nor a "
        f"graph node present in both training modes{close_matches(wanted, candidates)}; pass the name of the "
        "(N, T) attention mask argument, e.g. mask='attention_mask', or mask=None"
    )


def _shape_problem(program: Program, name: str, example: torch.Tensor, k: int) -> str | None:
    part = program.partitions[True]
    value = part.trace.node(name).meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        return f"{name!r} is {shape}, not an (N, T) mask"
    if example.dim() != 3 or tuple(value.shape) != tuple(example.shape[:2]):
        return f"mask {name!r} is {tuple(value.shape)}, the representation is {tuple(example.shape)}"
    if part.stage_of[name] > k:
        return f"{name!r} is computed in stage {part.stage_of[name]}, after stage {k}"
    return None


def carry_value(program: Program, name: str, k: int) -> None:
    """Make ``name`` part of the message into stages ``1 .. k + 1`` (in every traced mode).

    The value is produced by its own stage (or is a model input) and passed along unchanged by the
    stages in between, exactly like values the model itself reads after a cut.
    """
    for part in {id(p): p for p in program.partitions.values()}.values():
        nodes = {n.name: i for i, n in enumerate(part.trace.graph.nodes)}
        owner = part.stage_of[name]
        for j in range(max(owner, 0), min(k + 1, len(part.boundaries))):
            boundary = part.boundaries[j]
            if name not in boundary:
                boundary.append(name)
                boundary.sort(key=nodes.__getitem__)
        if owner >= 0 and owner < len(part.boundaries):
            outputs = part.stages[owner].outputs
            if name not in outputs:
                outputs.append(name)
                outputs.sort(key=nodes.__getitem__)
