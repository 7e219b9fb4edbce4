"""Per-stage checkpoints: what one rank saves, and how the files of all ranks become one model's state.

Why a format of its own: each rank holds only its stage's trained weights, objective and
optimizer state, so it writes ``stage{k}.pt`` alone; :func:`merge_checkpoints` checks that the
files fit together (one conversion, every stage, one step count) and returns a
``DecoupledModel.state_dict()``, so a distributed run resumes in one process and back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .decoupled import DecoupledModel
from .errors import DecoupleError
from .stage import Stage

__all__ = ["STAGE_FORMAT", "checkpoint_path", "stage_state", "load_stage_state", "merge_stage_states", "merge_checkpoints"]

STAGE_FORMAT = "decouple-stage/1"
_MODEL_FORMAT = "decouple/1"  # DecoupledModel.state_dict()


def checkpoint_path(directory: str | os.PathLike[str], stage: int) -> Path:
    """Where stage ``stage``'s checkpoint lives in ``directory``."""
    return Path(directory) / f"stage{stage}.pt"


def stage_state(dm: DecoupledModel, stage: Stage) -> dict[str, Any]:
    """One stage's training state: module, objective, optimizer, and the model's step count."""
    return {
        "format": STAGE_FORMAT,
        "method": dm.method,
        "fingerprint": dm.fingerprint(),
        "stage": stage.index,
        "num_stages": dm.num_stages,
        "steps": dm.steps,
        "module": stage.module.state_dict(),
        "objective": stage.objective.state_dict() if stage.objective is not None else {},
        "optimizer": stage.optimizer.state_dict() if stage.optimizer is not None else None,
    }


def load_stage_state(dm: DecoupledModel, stage: Stage, state: dict[str, Any]) -> None:
    """Restore ``stage`` of ``dm`` from :func:`stage_state` or from a whole ``DecoupledModel.state_dict()``."""
    _check_conversion(state, dm)
    if state["format"] == _MODEL_FORMAT:
        state = {**state["stages"][stage.index], "steps": state["steps"], "stage": stage.index}
    if state["stage"] != stage.index:
        raise DecoupleError(
            f"this checkpoint holds stage {state['stage']}, not stage {stage.index}; load "
            f"{checkpoint_path('.', stage.index).name} for stage {stage.index}"
        )
    stage.module.load_state_dict(state["module"])
    if stage.objective is not None:
        stage.objective.load_state_dict(state["objective"])
    if stage.optimizer is not None and state["optimizer"] is not None:
        stage.optimizer.load_state_dict(state["optimizer"])
    dm.steps = int(state["steps"])


def _check_conversion(state: dict[str, Any], dm: DecoupledModel) -> None:
    if not isinstance(state, dict) or state.get("format") not in (_MODEL_FORMAT, STAGE_FORMAT):
        raise DecoupleError("this is not a decouple checkpoint (no 'format' entry); write it with StageTrainer.save() or dm.state_dict()")
    if state["method"] != dm.method or state["fingerprint"] != dm.fingerprint():
        raise DecoupleError(
            f"this checkpoint was saved from a different conversion (method {state['method']!r}, fingerprint "
            f"{state['fingerprint']}; this model: {dm.method!r}, {dm.fingerprint()}); convert the model with the "
            "same method, splits and options before loading"
        )


def merge_stage_states(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage states, one per stage in stage order, as one ``DecoupledModel.state_dict()``."""
    first = parts[0]
    return {
        "format": _MODEL_FORMAT,
        "method": first["method"],
        "fingerprint": first["fingerprint"],
        "steps": first["steps"],
        "stages": [{"module": p["module"], "objective": p["objective"], "optimizer": p["optimizer"]} for p in parts],
    }


def merge_checkpoints(directory: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The stage checkpoints in ``directory`` as one ``DecoupledModel.state_dict()``.

    ``dm.load_state_dict(merge_checkpoints("ckpt"))`` resumes a distributed run in one process.
    """
    paths = sorted(Path(directory).glob("stage*.pt"))
    if not paths:
        raise DecoupleError(f"no stage checkpoints (stage0.pt, stage1.pt, ...) in {directory}; write them with StageTrainer.save()")
    parts = [torch.load(p, map_location=map_location, weights_only=True) for p in paths]
    if any(not isinstance(p, dict) or p.get("format") != STAGE_FORMAT for p in parts):
        raise DecoupleError(f"{directory} holds stage*.pt files that are not stage checkpoints; keep only StageTrainer.save() output there")
    parts.sort(key=lambda part: part["stage"])
    first = parts[0]
    if any(p["fingerprint"] != first["fingerprint"] for p in parts):
        raise DecoupleError(f"the stage checkpoints in {directory} come from different conversions; save them from one run")
    found = [p["stage"] for p in parts]
    if found != list(range(first["num_stages"])):
        raise DecoupleError(f"{directory} holds stages {found} of a {first['num_stages']}-stage model; every stage is needed")
    steps = {p["steps"] for p in parts}
    if len(steps) > 1:
        raise DecoupleError(f"the stage checkpoints in {directory} were saved at different steps {sorted(steps)}; save them from one run")
    return merge_stage_states(parts)
