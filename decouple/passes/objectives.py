"""Attach each stage's local objective: describe the stage, call the method's ``make_objective``, check what it made.

For every stage that trains a local objective this pass builds a
:class:`~decouple.objectives.stage_info.StageInfo` (the representation's example, the pool the
options ask for, the number of classes, the model's inputs, ...), calls ``make_objective(info)``
and checks the result: a :class:`~decouple.objectives.base.LocalObjective` of its own (not one
made for another stage, no parameter of the model), or ``None``. Then it wires what the objective
reads (the pool's attention mask, the model inputs it names in ``model_inputs``, carried to the
stage with the activations) and records its exit head as an inference tail.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..compiler.program import InferenceTail, Program
from ..errors import ConfigError, close_matches
from ..objectives.base import LocalObjective
from ..objectives.losses import logits_of
from ..objectives.pools import output_dim
from ..objectives.stage_info import StageInfo
from ..tree import first_tensor
from .masks import carry_value
from .pooling import PoolOptions, stage_pool
from .registry import Method

__all__ = ["attach_objectives", "stage_info", "known_classes"]


def attach_objectives(program: Program, method: Method, options: Any) -> None:
    """Give stages ``0 .. L-2`` (all ``L`` stages when the method replaces the head) their local objectives."""
    assert method.make_objective is not None, "a method without make_objective trains end to end"
    count = len(program.stages) if method.replaces_head else len(program.stages) - 1
    made: list[LocalObjective | None] = []
    for k in range(count):
        info, extras = stage_info(program, k, options, tuple(made), method.name)
        objective = method.make_objective(info)
        _check(objective, k, method.name, made, program)
        made.append(objective)
        if objective is None:
            program.notes.append(f"stage {k} has no local objective (make_objective returned None): it does not train")
            continue
        spec = program.stages[k]
        spec.objective = objective
        spec.objective_extras.update(extras)
        for keyword, argument in objective.model_inputs.items():
            if keyword in spec.objective_extras:
                raise ConfigError(
                    f"stage {k}'s objective reads the model input {argument!r} as keyword {keyword!r}, which the "
                    "pool's attention mask already uses; name it otherwise in model_inputs"
                )
            spec.objective_extras[keyword] = carry_input(program, k, argument)
        head = objective.exit_head()
        if head is not None:
            if not isinstance(head, nn.Module):
                raise ConfigError(
                    f"exit_head() of stage {k}'s {type(objective).__name__} returned {type(head).__name__}; return "
                    "an nn.Module called as module(representation, **extras), or None"
                )
            program.tails[k + 1] = InferenceTail(k + 1, [(f"exit_{k + 1}", head)], dict(extras))


def stage_info(
    program: Program, k: int, options: Any, previous: tuple[LocalObjective | None, ...], method: str
) -> tuple[StageInfo, dict[str, str]]:
    """What ``make_objective`` learns about stage ``k``, and the pool's keyword inputs (``{"mask": value name}``)."""
    pool_options = PoolOptions(
        pool=getattr(options, "pool", "auto"),
        pool_size=getattr(options, "pool_size", None),
        mask=getattr(options, "mask", "auto"),
        crossing=getattr(options, "crossing", "all"),
    )
    built = stage_pool(program, k, pool_options)
    mask = program.node(True, built.extras["mask"]).meta.get("val") if "mask" in built.extras else None
    trace = program.partitions[True].trace
    inputs = {name: trace.node(trace.inputs.placeholders[name]).meta.get("val") for name in trace.inputs.names}
    info = StageInfo(
        index=k,
        num_stages=len(program.stages),
        representation=program.representation_value(k),
        example=first_tensor(built.example),
        num_classes=known_classes(program),
        device=program.stages[k].device,
        pool=built.pool,
        pooled_dim=output_dim(built.pool, built.example),
        mask=mask,
        inputs=inputs,
        output=program.output_value(),
        options=options,
        previous=previous,
        method=method,
        notes=program.notes,
    )
    return info, dict(built.extras)


def known_classes(program: Program) -> int | None:
    """``num_classes`` as given to ``convert``, else the width of a ``(batch, classes)`` output (recorded in the
    program), else None."""
    given = program.num_classes
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 2:
            raise ConfigError(f"num_classes must be an int >= 2, got {given!r}")
        return given
    logits = logits_of(program.output_value())
    if logits is not None and logits.dim() == 2 and logits.shape[1] >= 2:
        program.num_classes = int(logits.shape[1])
        return program.num_classes
    return None


def carry_input(program: Program, k: int, argument: str) -> str:
    """Carry the model's ``forward`` argument ``argument`` to stage ``k``; returns its value's name in the messages."""
    names = set()
    for part in {id(p): p for p in program.partitions.values()}.values():
        placeholders = part.trace.inputs.placeholders
        if argument not in placeholders:
            raise ConfigError(
                f"stage {k}'s objective reads the model input {argument!r}, which is not an input of the traced "
                f"model (its inputs: {list(placeholders)}){close_matches(argument, placeholders)}; name one of them "
                "in model_inputs, or pass that argument in example_inputs"
            )
        names.add(placeholders[argument])
    if len(names) != 1:
        raise ConfigError(f"the model input {argument!r} has different names in the train and eval traces: {names}")
    name = names.pop()
    carry_value(program, name, k)
    return name


def _check(objective: Any, k: int, method: str, made: list[LocalObjective | None], program: Program) -> None:
    if objective is None:
        return
    if not isinstance(objective, LocalObjective):
        raise ConfigError(
            f"make_objective of method {method!r} returned {type(objective).__name__} for stage {k}; return a "
            "decouple.LocalObjective (an nn.Module whose forward(representation, carry, **extras) returns a "
            "decouple.LocalResult), or None for a stage without a local objective"
        )
    if any(objective is other for other in made):
        raise ConfigError(
            f"make_objective of method {method!r} returned the same {type(objective).__name__} for stage {k} as for "
            "an earlier stage; build a new objective on every call"
        )
    mine = {id(p) for p in objective.parameters()}
    model = [name for name, p in program.root.named_parameters() if id(p) in mine]
    if model:
        raise ConfigError(
            f"stage {k}'s objective ({type(objective).__name__}) holds parameters of the model itself "
            f"({', '.join(model[:3])}); build new modules for it in make_objective, or the stages would not "
            "train in isolation"
        )
    if any(id(p) in mine for other in made if other is not None for p in other.parameters()):
        raise ConfigError(
            f"stage {k}'s objective ({type(objective).__name__}) shares parameters with an earlier stage's objective; "
            "each stage's optimizer steps its own objective's parameters, so keep references to earlier modules "
            "out of the module tree (a plain list, as associated learning keeps its earlier decoders)"
        )
