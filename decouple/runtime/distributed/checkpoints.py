"""Per-rank checkpoint files: where each rank writes its stage, and reading a folder of them back as one model state.

Each rank holds only its stage's trained weights, objective and optimizer state, so it writes
``stage{k}.pt`` alone (:func:`~decouple.runtime.state.stage_checkpoint`); :func:`merge_checkpoints`
checks that the files fit together (one conversion, every stage, one step count) and returns a
``DecoupledModel.state_dict()``, so a distributed run resumes in one process and back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError
from ..state import merge_stage_checkpoints

__all__ = ["checkpoint_path", "merge_checkpoints"]


def checkpoint_path(directory: str | os.PathLike[str], stage: int) -> Path:
    """Where stage ``stage``'s checkpoint lives in ``directory``."""
    return Path(directory) / f"stage{stage}.pt"


def merge_checkpoints(directory: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The stage checkpoints in ``directory`` as one ``DecoupledModel.state_dict()``.

    ``dm.load_state_dict(merge_checkpoints("ckpt"))`` resumes a distributed run in one process.
    """
    paths = sorted(Path(directory).glob("stage*.pt"))
    if not paths:
        raise ConfigError(
            f"no stage checkpoints (stage0.pt, stage1.pt, ...) in {directory}; write them with StageTrainer.save()"
        )
    parts = [torch.load(p, map_location=map_location, weights_only=True) for p in paths]
    return merge_stage_checkpoints(parts, where=f"the stage checkpoints in {directory}")
