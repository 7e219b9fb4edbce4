"""Data-parallel replicas of a stage: one global batch split into equal shards, replicas started equal, gradients averaged.

Why averaging gradients is exact: every local loss is a mean over its samples, so the gradient of
the mean over ``R`` equal shards is the mean of the shards' gradients; with gradients averaged
over the stage's replica group before the optimizer step (before unscaling and clipping, so fp16
scalers and clip norms see the same gradients everywhere), every replica applies the update one
process would make on the whole batch (batch norm aside: its statistics stay per replica). With
``on_nonfinite="skip"``, a non-finite loss on one replica skips its group's step on all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree
from torch import nn

from ...codegen.stage import Stage
from ...errors import ConfigError, InputError
from .links import collective

__all__ = ["shard", "broadcast_stage", "GradientAverager", "sync_batch_norm", "BUCKET_BYTES"]

#: the largest flat buffer one all-reduce sends (gradients of several parameters share one)
BUCKET_BYTES = 32 * 2**20


def shard(
    message: dict[str, Any], carry: Any, replicas: int, *, batch: int | None = None
) -> list[tuple[dict[str, Any], Any]]:
    """Split one global batch into ``replicas`` equal shards along dim 0 (inputs and target alike).

    Every tensor with a leading dimension must have the batch size there (replicas split inputs
    batch-first); other values (ints, flags, scalars) go to every shard.
    """
    sizes = {int(t.shape[0]) for t in pytree.tree_leaves(carry) if isinstance(t, torch.Tensor) and t.dim() > 0}
    if len(sizes) != 1:
        raise InputError(
            f"replicas split a batch by its target, which must be a tensor with a batch dimension, got {type(carry).__name__}"
        )
    n = sizes.pop()
    where = f" (batch {batch})" if batch is not None else ""
    for name, value in message.items():
        for t in pytree.tree_leaves(value):
            if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] != n:
                raise InputError(
                    f"input {name!r} has shape {tuple(t.shape)}{where}, but the target holds {n} samples: replicas split "
                    "every input along dim 0, so inputs must be batch-first (e.g. an RNN's input as (N, T, D))"
                )
    if n % replicas:
        raise InputError(
            f"a batch of {n} samples{where} does not split into {replicas} equal shards, one per replica; use a batch size "
            f"that {replicas} divides (and drop_last=True in the DataLoader, so the last batch is full too)"
        )
    size = n // replicas

    def part(r: int) -> Callable[[Any], Any]:
        return lambda t: t[r * size : (r + 1) * size] if isinstance(t, torch.Tensor) and t.dim() > 0 else t

    return [(pytree.tree_map(part(r), message), pytree.tree_map(part(r), carry)) for r in range(replicas)]


def _state_tensors(stage: Stage) -> list[torch.Tensor]:
    modules: list[nn.Module] = [stage.module] + ([stage.objective] if stage.objective is not None else [])
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return list({id(t): t for t in tensors}.values())


def broadcast_stage(stage: Stage, group: dist.ProcessGroup, src: int) -> None:
    """Give every replica of ``stage`` the parameters and buffers of the one on global rank ``src`` (as DDP does)."""
    with torch.no_grad():
        for t in _state_tensors(stage):
            collective(partial(dist.broadcast, t, src, group=group))


class GradientAverager:
    """Averages a stage's gradients over its replica group before each optimizer step (a ``runtime.step.GroupSync``).

    Bucketed flat all-reduces, parameters in a fixed order. A parameter that has no gradient on
    some replicas counts zero there (it did not reach their samples); one that has none anywhere
    keeps none. Whether any replica skipped a non-finite loss in the group travels in the same
    reduce, so every replica steps or skips alike.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        group: dist.ProcessGroup,
        replicas: int,
        *,
        bucket_bytes: int = BUCKET_BYTES,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.group = group
        self.replicas = replicas
        self.buckets = _buckets(self.params, bucket_bytes)
        self.nonfinite = False  # this replica skipped a non-finite loss in the current group
        self.seconds = 0.0  # wall time spent averaging (the all-reduce share of a step)

    def note_nonfinite(self) -> None:
        self.nonfinite = True

    def __call__(self, stage: Stage) -> bool:
        """Average the gradients in place; ``False`` when a replica skipped a non-finite loss (then no one steps)."""
        start = time.perf_counter()
        try:
            return self._average(stage.device)
        finally:
            self.nonfinite = False
            self.seconds += time.perf_counter() - start

    def _average(self, device: torch.device) -> bool:
        flags = [float(p.grad is not None) for p in self.params] + [float(self.nonfinite)]
        presence = torch.tensor(flags, device=device)
        collective(lambda: dist.all_reduce(presence, group=self.group))
        if presence[-1] > 0:
            return False
        counts = presence[:-1].tolist()
        index = 0
        for bucket in self.buckets:
            dtype = bucket[0].dtype
            flat = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in bucket]
            )
            collective(partial(dist.all_reduce, flat, group=self.group))
            flat /= self.replicas
            offset = 0
            for p in bucket:
                n = p.numel()
                if counts[index] > 0:
                    value = flat[offset : offset + n].view_as(p)
                    if p.grad is None:
                        p.grad = value.clone()
                    else:
                        p.grad.copy_(value)
                offset += n
                index += 1
        return True


def _buckets(params: Sequence[nn.Parameter], cap: int) -> list[list[nn.Parameter]]:
    """Consecutive parameters of one dtype, each group at most ``cap`` bytes (a larger parameter is a bucket alone)."""
    buckets: list[list[nn.Parameter]] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        if buckets and buckets[-1][0].dtype == p.dtype and size + nbytes <= cap:
            buckets[-1].append(p)
            size += nbytes
        else:
            buckets.append([p])
            size = nbytes
    return buckets


def sync_batch_norm(stage: Stage, group: dist.ProcessGroup) -> int:
    """Replace the stage's batch norms with ``SyncBatchNorm`` over ``group`` (both training-mode graphs); returns how many.

    torch's ``SyncBatchNorm`` synchronises statistics of CUDA tensors only, so the stage must be on a GPU.
    """
    norms = [(name, m) for name, m in stage.module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms and stage.device.type != "cuda":
        raise ConfigError(
            f"sync_batchnorm=True: stage {stage.index} runs on {stage.device}, and torch's SyncBatchNorm synchronises "
            "CUDA tensors only; train the stages on GPUs (StageTrainer(dm, device='cuda')), or leave sync_batchnorm "
            "off to keep batch-norm statistics per replica"
        )
    for name, module in norms:
        if isinstance(module, nn.SyncBatchNorm):
            continue
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(module, group)
        for graph_module in {id(g): g for g in (stage.module, stage.eval_module)}.values():
            parent, _, attr = name.rpartition(".")
            setattr(graph_module.get_submodule(parent) if parent else graph_module, attr, synced)
    return len(norms)
