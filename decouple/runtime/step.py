"""A stage's local step: the one implementation the sequential step, the pipeline workers and the ranks call.

For each batch a stage runs its forward and local objective under autocast (the losses reduce in
fp32, see ``objectives/precision.py``), backpropagates ``loss / accumulate`` (through its gradient
scaler under fp16) and, on the ``accumulate``-th batch of a group, steps: unscale, clip (module and
head parameters together), optimizer step, scaler update, per-step scheduler. At the end of an
epoch :func:`end_epoch` steps a last partial group (its summed gradient rescaled to the mean of the
batches it holds) and the per-epoch schedulers. Values handed to the next stage are detached and
travel in the autocast dtype.

Because every runtime calls these functions in the same order per stage, stage ``k`` sees batch
``b`` after exactly the optimizer steps of the groups completed before ``b``, whichever runtime
trains it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch

from ..codegen.stage import Stage, StageResult
from ..errors import StageError
from ..tree import detach_tree, map_tensors
from .config import TrainingConfig

__all__ = [
    "Phase",
    "GroupSync",
    "autocast",
    "forward_local",
    "backward_local",
    "backward_end_to_end",
    "optimizer_step",
    "end_epoch",
    "check_finite",
    "hand_on",
    "learning_rate",
]

#: ``phase(name)``: a context manager around each part of the step (the pipeline records a timeline)
Phase = Callable[[str], AbstractContextManager[Any]]


class GroupSync(Protocol):
    """What data-parallel replicas of a stage do before each optimizer step (``runtime/distributed/replicas.py``)."""

    def note_nonfinite(self) -> None:
        """This replica skipped a non-finite loss in the current group."""

    def __call__(self, stage: Stage) -> bool:
        """Average the stage's gradients over its replicas; ``False``: a replica saw a non-finite loss, skip the step."""


def _no_phase(name: str) -> AbstractContextManager[Any]:
    return nullcontext()


def autocast(device: torch.device, config: TrainingConfig) -> AbstractContextManager[Any]:
    """Autocast for ``device`` in the configured precision (nothing in full precision)."""
    if config.dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=config.dtype)


def forward_local(
    stage: Stage, config: TrainingConfig, message: dict[str, Any], carry: Any, *, phase: Phase = _no_phase
) -> StageResult:
    """The stage's forward and its local objective, with gradients, under autocast."""
    if config.scaled and stage.device.type != "cuda":
        config.check_devices([stage.device])  # fp16 on a stage that never moved to a GPU
    with torch.enable_grad(), autocast(stage.device, config):
        with phase("forward"):
            next_message, output = stage(message)
        with phase("loss"):
            local = stage.evaluate(message, next_message, output, carry)
    return StageResult(next_message, output, local)


def check_finite(stage: Stage, loss: torch.Tensor, *, batch: int | None = None) -> bool:
    """Whether to backpropagate ``loss``: a non-finite loss raises a :class:`StageError`
    (``on_nonfinite="raise"``) or is skipped and counted in ``skipped_steps`` (``"skip"``)."""
    if bool(torch.isfinite(loss.detach())):
        return True
    if stage.on_nonfinite == "skip":
        stage.skipped_steps += 1
        return False
    where = f" at batch {batch}" if batch is not None else ""
    raise StageError(
        f"stage {stage.index}: local loss is {float(loss.detach())}{where}; lower the learning rate, check the inputs, "
        "or convert with on_nonfinite='skip' to skip such updates",
        stage=stage.index,
        batch=batch,
    )


def _open_group(stage: Stage) -> None:
    if stage.accumulated == 0 and stage.optimizer is not None:
        stage.optimizer.zero_grad(set_to_none=True)


def _backward(loss: torch.Tensor, config: TrainingConfig, scaler: torch.amp.GradScaler | None) -> None:
    if not loss.requires_grad:
        return
    if config.accumulate > 1:
        loss = loss / config.accumulate
    (scaler.scale(loss) if scaler is not None else loss).backward()


def backward_local(
    stage: Stage,
    config: TrainingConfig,
    loss: torch.Tensor,
    *,
    batch: int | None = None,
    phase: Phase = _no_phase,
    sync: GroupSync | None = None,
) -> bool:
    """Backpropagate one batch's local loss; step when it completes a group. Returns whether the stage stepped.

    With ``sync`` (data-parallel replicas) every replica reaches the step of every group, so their
    collectives meet: a replica that skips a non-finite loss tells ``sync``, and the group's step is
    then skipped on every replica alike.
    """
    _open_group(stage)
    finite = check_finite(stage, loss, batch=batch)
    if not finite:
        if sync is not None:
            sync.note_nonfinite()
        elif config.accumulate == 1:
            return False  # the skipped batch leaves the stage as it was
    if finite:
        with phase("backward"):
            _backward(loss, config, stage.scaler)
    stage.accumulated += 1
    if stage.accumulated < config.accumulate:
        return False
    with phase("step"):
        return optimizer_step(stage, config, sync=sync)


def backward_end_to_end(
    stages: Sequence[Stage], config: TrainingConfig, loss: torch.Tensor, *, batch: int | None = None
) -> bool:
    """``bp``: one loss through every stage (one scaler: the last stage's), then every stage's step on a full group."""
    last = stages[-1]
    for stage in stages:
        _open_group(stage)
    if not check_finite(last, loss, batch=batch):
        if config.accumulate == 1:
            return False
    else:
        _backward(loss, config, last.scaler)
    for stage in stages:
        stage.accumulated += 1
    if last.accumulated < config.accumulate:
        return False
    return _step_end_to_end(stages, config)


def _step_end_to_end(stages: Sequence[Stage], config: TrainingConfig) -> bool:
    scaler = stages[-1].scaler
    stepped = [optimizer_step(s, config, scaler=scaler, update_scaler=False) for s in stages]
    if scaler is not None and any(stepped):
        scaler.update()
    return any(stepped)


def optimizer_step(
    stage: Stage,
    config: TrainingConfig,
    *,
    scaler: torch.amp.GradScaler | None = None,
    update_scaler: bool = True,
    sync: GroupSync | None = None,
) -> bool:
    """Step the stage on the gradients summed since its last step: unscale, clip, step, scheduler.

    A group of fewer than ``accumulate`` batches (the end of an epoch) has its gradient rescaled to
    the mean over the batches it holds. Returns whether the optimizer stepped (not when no batch of
    the group left a gradient). The gradients are freed once the group is over: kept until the
    next backward they would sit beside the next forward's activations.
    """
    held, stage.accumulated = stage.accumulated, 0
    if sync is not None and held > 0 and not sync(stage):
        _free_gradients(stage)
        return False  # a replica saw a non-finite loss in this group: none of them steps
    optimizer = stage.optimizer
    if optimizer is None or held == 0:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        return False
    scaler = scaler if scaler is not None else stage.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if held < config.accumulate:
        for p in params:
            p.grad.mul_(config.accumulate / held)
    if config.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
    if config.clip_grad_value is not None:
        torch.nn.utils.clip_grad_value_(params, config.clip_grad_value)
    if scaler is not None:
        scaler.step(optimizer)
        if update_scaler:
            scaler.update()
    else:
        optimizer.step()
    _free_gradients(stage)
    if stage.scheduler is not None and config.scheduler_interval == "step":
        stage.scheduler.step()
    return True


def _free_gradients(stage: Stage) -> None:
    if stage.optimizer is not None:
        stage.optimizer.zero_grad(set_to_none=True)


def end_epoch(
    stages: Sequence[Stage], config: TrainingConfig, *, end_to_end: bool = False, sync: GroupSync | None = None
) -> None:
    """The end of an epoch: step every stage's partial group, then the per-epoch schedulers."""
    if end_to_end:
        if stages and stages[-1].accumulated:
            _step_end_to_end(stages, config)
    else:
        for stage in stages:
            if stage.accumulated:
                optimizer_step(stage, config, sync=sync)
    if config.scheduler_interval == "epoch":
        for stage in stages:
            if stage.scheduler is not None:
                stage.scheduler.step()


def hand_on(value: Any, config: TrainingConfig) -> Any:
    """``value`` as it crosses a cut: detached, floating-point tensors in the autocast dtype."""
    dtype = config.dtype
    if dtype is None:
        return detach_tree(value)
    return map_tensors(lambda t: t.detach().to(dtype) if t.is_floating_point() else t.detach(), value)


def learning_rate(stage: Stage) -> float | None:
    """The current learning rate of the stage's first parameter group (``None`` without an optimizer)."""
    if stage.optimizer is None or not stage.optimizer.param_groups:
        return None
    return float(stage.optimizer.param_groups[0]["lr"])
