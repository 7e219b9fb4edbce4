"""The training state of stages, as saved and loaded everywhere: one codec with its format versions.

A stage's state is its generated module, its objective, its optimizer, scheduler and gradient
scaler, and where it stands in an accumulation group (with the gradients summed so far, so a
state saved mid-group resumes exactly) (``stage_state``). A whole model's state (:data:`MODEL_FORMAT`) lists every stage's, with the method, the conversion's
fingerprint and the step count; a rank's checkpoint (:data:`STAGE_FORMAT`) holds one stage's with
the same identification, and :func:`merge_stage_checkpoints` turns one per stage into a model
state, so a distributed run resumes in one process and back. Loading checks the conversion first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..codegen.stage import Stage
from ..errors import ConfigError
from .protocol import StagedModel

__all__ = [
    "MODEL_FORMAT",
    "STAGE_FORMAT",
    "MODEL_FORMATS",
    "STAGE_FORMATS",
    "stage_state",
    "load_stage_state",
    "model_state",
    "load_model_state",
    "stage_checkpoint",
    "load_stage_checkpoint",
    "merge_stage_checkpoints",
    "check_conversion",
]

#: ``DecoupledModel.state_dict()``: every stage, in one dict (version 2 adds schedulers, scalers, accumulation)
MODEL_FORMAT = "decouple/2"
#: one rank's checkpoint: one stage, identified by its index in the conversion
STAGE_FORMAT = "decouple-stage/2"
#: the versions this codec reads (a version-1 state has no scheduler, scaler or accumulation entries)
MODEL_FORMATS = ("decouple/1", MODEL_FORMAT)
STAGE_FORMATS = ("decouple-stage/1", STAGE_FORMAT)
_STAGE_KEYS = ("module", "objective", "optimizer", "scheduler", "scaler", "accumulated", "gradients", "skipped_steps")


def stage_state(stage: Stage) -> dict[str, Any]:
    """One stage's training state: module, objective (affiliated parameters), optimizer, scheduler, scaler."""
    return {
        "module": stage.module.state_dict(),
        "objective": stage.objective.state_dict() if stage.objective is not None else {},
        "optimizer": stage.optimizer.state_dict() if stage.optimizer is not None else None,
        "scheduler": stage.scheduler.state_dict() if stage.scheduler is not None else None,
        "scaler": stage.scaler.state_dict() if stage.scaler is not None else None,
        "accumulated": stage.accumulated,
        # the gradients summed so far in an open accumulation group (none between groups)
        "gradients": {n: p.grad.detach().clone() for n, p in stage.named_parameters() if p.grad is not None}
        if stage.accumulated
        else {},
        "skipped_steps": stage.skipped_steps,
    }


def load_stage_state(stage: Stage, state: dict[str, Any], *, strict: bool = True) -> None:
    """Restore a stage from :func:`stage_state` (entries a version-1 state lacks are left as they are)."""
    stage.module.load_state_dict(state["module"], strict=strict)
    if stage.objective is not None:
        stage.objective.load_state_dict(state["objective"], strict=strict)
    if stage.optimizer is not None and state["optimizer"] is not None:
        stage.optimizer.load_state_dict(state["optimizer"])
    if stage.scheduler is not None and state.get("scheduler") is not None:
        stage.scheduler.load_state_dict(state["scheduler"])
    if stage.scaler is not None and state.get("scaler") is not None:
        stage.scaler.load_state_dict(state["scaler"])
    stage.accumulated = int(state.get("accumulated", 0))
    stage.skipped_steps = int(state.get("skipped_steps", stage.skipped_steps))
    gradients = state.get("gradients", {})
    for name, p in stage.named_parameters():
        saved = gradients.get(name)
        p.grad = None if saved is None else saved.to(p.device, p.dtype).clone()


def _identity(model: StagedModel) -> dict[str, Any]:
    return {"method": model.method, "fingerprint": model.fingerprint(), "steps": model.steps}


def model_state(model: StagedModel) -> dict[str, Any]:
    """The whole training state of ``model`` (:data:`MODEL_FORMAT`)."""
    return {"format": MODEL_FORMAT, **_identity(model), "stages": [stage_state(s) for s in model.stages]}


def check_conversion(state: Any, model: StagedModel, *, formats: Sequence[str] = MODEL_FORMATS + STAGE_FORMATS) -> None:
    """Raise :class:`ConfigError` unless ``state`` is a decouple state saved from the same conversion as ``model``."""
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise ConfigError(
            f"this is not a decouple checkpoint (its 'format' is {state.get('format') if isinstance(state, dict) else None!r}, "
            f"expected one of {list(formats)}); write it with dm.state_dict() or StageTrainer.save()"
        )
    if state["method"] != model.method or state["fingerprint"] != model.fingerprint():
        raise ConfigError(
            f"this state was saved from a different conversion (method {state['method']!r}, fingerprint "
            f"{state['fingerprint']}; this model: {model.method!r}, {model.fingerprint()}); convert the model with "
            "the same method, splits and options before loading"
        )


def load_model_state(model: StagedModel, state: dict[str, Any], *, strict: bool = True) -> None:
    """Restore every stage of ``model`` and its step count from :func:`model_state`."""
    check_conversion(state, model, formats=MODEL_FORMATS)
    for stage, saved in zip(model.stages, state["stages"]):
        load_stage_state(stage, saved, strict=strict)
    model.steps = int(state["steps"])


def stage_checkpoint(model: StagedModel, stage: Stage) -> dict[str, Any]:
    """What one rank saves (:data:`STAGE_FORMAT`): its stage's state, identified within the conversion."""
    return {
        "format": STAGE_FORMAT,
        **_identity(model),
        "stage": stage.index,
        "num_stages": model.num_stages,
        **stage_state(stage),
    }


def load_stage_checkpoint(model: StagedModel, stage: Stage, state: dict[str, Any]) -> None:
    """Restore ``stage`` of ``model`` from :func:`stage_checkpoint` or from a whole :func:`model_state`."""
    check_conversion(state, model)
    if state["format"] in MODEL_FORMATS:
        state = {**state["stages"][stage.index], "steps": state["steps"], "stage": stage.index}
    if state["stage"] != stage.index:
        raise ConfigError(
            f"this checkpoint holds stage {state['stage']}, not stage {stage.index}; load stage{stage.index}.pt "
            f"for stage {stage.index}"
        )
    load_stage_state(stage, state)
    model.steps = int(state["steps"])


def merge_stage_checkpoints(parts: Sequence[dict[str, Any]], *, where: str = "these checkpoints") -> dict[str, Any]:
    """One :func:`stage_checkpoint` per stage (any order) as one :func:`model_state`, checked to fit together."""
    if not parts:
        raise ConfigError(f"{where}: no stage checkpoints to merge")
    if any(not isinstance(p, dict) or p.get("format") not in STAGE_FORMATS for p in parts):
        raise ConfigError(f"{where}: not every file is a stage checkpoint; keep only StageTrainer.save() output there")
    ordered = sorted(parts, key=lambda part: part["stage"])
    first = ordered[0]
    if any(p["fingerprint"] != first["fingerprint"] for p in ordered):
        raise ConfigError(f"{where} come from different conversions; save them from one run")
    found = [p["stage"] for p in ordered]
    if found != list(range(first["num_stages"])):
        raise ConfigError(f"{where} hold stages {found} of a {first['num_stages']}-stage model; every stage is needed")
    steps = {p["steps"] for p in ordered}
    if len(steps) > 1:
        raise ConfigError(f"{where} were saved at different steps {sorted(steps)}; save them from one run")
    stages = [{key: p[key] for key in _STAGE_KEYS if key in p} for p in ordered]
    return {
        "format": MODEL_FORMAT,
        "method": first["method"],
        "fingerprint": first["fingerprint"],
        "steps": first["steps"],
        "stages": stages,
    }
