"""``fit(checkpoint_dir=...)``: the whole training state after each epoch, written atomically, the last few kept.

A checkpoint is a model state (:func:`~.state.model_state`: stages, heads, optimizers, schedulers,
scalers, accumulation, step count) or one rank's stage state, plus the epochs completed, the
history so far and the random number generators' states (torch, CUDA, Python, NumPy), so a run
resumed from it continues exactly as the uninterrupted run would have. It loads with
``torch.load(path, weights_only=True)``.

Why atomic: the file is written under a temporary name in the same folder, flushed to disk and
renamed over the final name (``os.replace``), so a crash mid-save leaves the previous checkpoint
and at most a stray temporary file, which is never read. Resuming still tries the newest file
first and falls back to older ones if it cannot be read (a file truncated by other means).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .state import MODEL_FORMATS, merge_stage_checkpoints
from .stats import RunStats

__all__ = [
    "checkpoint_name",
    "save_atomically",
    "list_checkpoints",
    "load_newest",
    "load_newest_model_state",
    "prune",
    "check_keep",
    "rng_state",
    "restore_rng",
    "history_state",
    "restore_history",
]

_NAME = re.compile(r"^epoch(\d+)(?:\.stage(\d+))?\.pt$")


def checkpoint_name(epoch: int, stage: int | None = None) -> str:
    """``epoch0003.pt`` (a whole model after 3 epochs) or ``epoch0003.stage1.pt`` (rank 1's stage)."""
    return f"epoch{epoch:04d}" + (f".stage{stage}" if stage is not None else "") + ".pt"


def save_atomically(state: Any, path: Path) -> Path:
    """``torch.save(state, path)`` through a temporary file and a rename: ``path`` is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | os.PathLike[str], stage: int | None = None) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the checkpoints in ``directory`` for ``stage`` (``None``: whole models), newest first."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and (int(match[2]) if match[2] is not None else None) == stage:
            found.append((int(match[1]), path))
    return sorted(found, reverse=True)


def load_newest(
    candidates: list[tuple[int, Path]], map_location: str | torch.device = "cpu"
) -> tuple[int, dict[str, Any]] | None:
    """The newest of ``candidates`` that reads back whole (unreadable files are passed over), or ``None``."""
    for epoch, path in candidates:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception:  # truncated or corrupt: an older checkpoint is the one to resume from
            continue
        if isinstance(state, dict):
            return epoch, state
    return None


def load_newest_model_state(directory: str | os.PathLike[str], num_stages: int) -> tuple[int, dict[str, Any]] | None:
    """The newest readable whole-model checkpoint in ``directory``: a single-process one, or one epoch's stage
    files of a multi-process run merged (with a history rebuilt from the ranks' logs)."""
    staged: dict[int, list[Path]] = {}
    for stage in range(num_stages):
        for epoch, path in list_checkpoints(directory, stage):
            staged.setdefault(epoch, []).append(path)
    candidates = [(e, [p]) for e, p in list_checkpoints(directory)]
    candidates += [(e, paths) for e, paths in staged.items() if len(paths) == num_stages]
    for epoch, paths in sorted(candidates, key=lambda c: (c[0], len(c[1]) == 1), reverse=True):
        parts = [load_newest([(epoch, p)]) for p in paths]
        if any(part is None for part in parts):
            continue
        states = [part[1] for part in parts if part is not None]
        if len(states) == 1 and states[0].get("format") in MODEL_FORMATS:
            return epoch, states[0]
        return epoch, _merged(states)
    return None


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    state = merge_stage_checkpoints(parts, where="the stage checkpoints of one epoch")
    first = min(parts, key=lambda p: p["stage"])
    logs = {p["stage"]: p["log"] for p in parts}
    history = []
    for e, batches in enumerate(first["log"]["epoch_batches"]):
        losses = {
            f"stage{k}": log["epoch_losses"][e] for k, log in sorted(logs.items()) if log["epoch_losses"][e] is not None
        }
        validation = first["validation"][e] if e < len(first.get("validation", [])) else {}
        history.append(asdict(RunStats(losses, batches, 0, 0.0, validation=dict(validation))))
    return {**state, "epoch": first["epoch"], "rng": first["rng"], "history": history}


def prune(directory: str | os.PathLike[str], keep: int, stage: int | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints of ``stage`` in ``directory``."""
    for _, path in list_checkpoints(directory, stage)[keep:]:
        path.unlink(missing_ok=True)


def check_keep(keep: Any) -> int:
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"keep_checkpoints must be an int >= 1 (how many of the newest to keep), got {keep!r}")
    return keep


# -- random number generators ------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The state of every random number generator a training loop may draw from, as plain tensors and tuples."""
    version, words, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    assert not isinstance(key, str)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": (version, list(words), gauss),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"].cpu())
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -- history -----------------------------------------------------------------------------------
def history_state(history: list[RunStats]) -> list[dict[str, Any]]:
    return [asdict(stats) for stats in history]


def restore_history(saved: list[dict[str, Any]]) -> list[RunStats]:
    names = {f.name for f in fields(RunStats)}
    return [RunStats(**{k: v for k, v in entry.items() if k in names}) for entry in saved]
