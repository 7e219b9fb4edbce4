"""Multi-process training from one process: pickle the model and loader to one spawned rank per stage (and replica).

The way past the GIL without a launcher: :func:`fit_processes` returns after every rank has
trained, with the merged state loaded back into the caller's model.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from ...errors import ConfigError
from ...frontend.trace import Trace
from ..config import TrainingConfig
from ..protocol import StagedModel
from ..state import load_model_state, merge_stage_checkpoints
from .group import check_staged
from .launch import launch
from .rank_loop import StepRecord
from .trainer import History, StageTrainer

__all__ = ["fit_processes"]


class _TraceInputs:
    """What a rank needs of a trace (the input binding), in place of the traced graph, which does not pickle."""

    def __init__(self, inputs: Any) -> None:
        self.inputs = inputs


class _RankPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Trace):
            return _TraceInputs, (obj.inputs,)
        if isinstance(obj, TrainingConfig) and obj.scheduler is not None:
            # the stages hold their schedulers already; the factory (often a lambda) stays here
            return TrainingConfig, tuple(getattr(obj, f.name) if f.name != "scheduler" else None for f in fields(obj))
        return NotImplemented


def _pickled(value: Any, what: str) -> bytes:
    buffer = io.BytesIO()
    try:
        _RankPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"fit_processes sends {what} to its worker processes by pickling, which failed ({exc}); define loss_fn, "
            "heads and the model at module level (no lambdas or local classes), or use launch(fn, nprocs) with a "
            "function that builds the model in each process"
        ) from exc
    return buffer.getvalue()


def fit_processes(
    dm: StagedModel,
    loader: Iterable[Any],
    epochs: int = 1,
    *,
    replicas: int = 1,
    threads: int | None = None,
    timeout: float = 600.0,
    on_step: Callable[[StepRecord], None] | None = None,
) -> History:
    """Train ``dm`` with one process per stage (per replica) on this machine, then load the trained state into ``dm``.

    The way past the GIL without a launcher: the result equals ``dm.train_step`` over the same
    batches (with ``replicas=R``, ``R`` copies of every stage each train on ``1 / R`` of each
    batch and average their gradients). The model and ``loader`` are pickled to the processes
    (rank 0 reads a copy of the loader: its random state does not advance here); ``on_step`` must
    be a module-level function. ``threads``: intra-op threads per process (default: the cores
    shared out). CPU stages only; for GPUs use :func:`launch` with a function that builds the
    model, or torchrun.
    """
    check_staged(dm)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive int, got {epochs!r}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"replicas must be a positive int, got {replicas!r}")
    if any(s.device.type != "cpu" for s in dm.stages):
        raise ConfigError(
            "fit_processes runs CPU stages; train GPU stages with launch(fn, nprocs) where fn builds the model "
            "and calls StageTrainer(dm, device='cuda'), or with torchrun"
        )
    model, data = _pickled(dm, "the model"), _pickled(loader, "the loader")
    nprocs = dm.num_stages * replicas
    results = launch(_fit_rank, nprocs, model, data, epochs, replicas, on_step, threads=threads, timeout=timeout)
    replica0 = [state for _, state in results[: dm.num_stages]]  # ranks 0 .. S - 1: replica 0's pipeline
    load_model_state(dm, merge_stage_checkpoints(replica0, where="the ranks' states"))
    return results[0][0]


def _fit_rank(
    model: bytes, data: bytes, epochs: int, replicas: int, on_step: Callable[[StepRecord], None] | None
) -> tuple[History, dict[str, Any]]:
    trainer = StageTrainer(pickle.loads(model), replicas=replicas)
    loader = pickle.loads(data) if trainer.rank == 0 else None
    history = trainer.fit(loader, epochs, on_step=on_step)
    return history, trainer.state_dict()
