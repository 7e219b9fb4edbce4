"""Pools: modules that turn a stage's representation into one vector per sample for its local head.

A representation can be a feature map ``(N, C, H, W)``, a sequence ``(N, T, D)``, a
channel-first signal ``(N, C, L)`` or a vector ``(N, D)``. :func:`make_pool` picks how it becomes a
vector; the default keeps heads independent of input resolution by average-pooling feature maps
to a small fixed grid (the papers flatten, which ties head size to the example input size and
grows to tens of millions of parameters on large maps: ``pool="flatten"`` gives that). Sequence
pools read an ``(N, T)`` attention mask when one is given (``reads_mask``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

from ..errors import ConfigError
from ..tree import first_tensor

__all__ = [
    "Flatten",
    "GridPool",
    "TokenMean",
    "TokenSelect",
    "FinalState",
    "BatchFirst",
    "FirstTensor",
    "ConcatPool",
    "last_valid_index",
    "first_valid_index",
    "reads_mask",
    "make_pool",
    "output_dim",
    "POOLS",
    "CHANNEL_FIRST_MODULES",
    "MAX_POOLED_FEATURES",
]

POOLS = ("auto", "avg", "flatten", "mean", "first", "cls", "last", "final_state", "none")

#: modules whose 3-D outputs are channel-first (N, C, L) rather than sequences (N, T, D).
CHANNEL_FIRST_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
)

#: the cap on pooled feature size that the default grid respects (channels * grid cells).
MAX_POOLED_FEATURES = 4096


class Flatten(nn.Module):
    """``x.flatten(1)``: the papers' head input (size tied to the example input's resolution)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_tensor(x).flatten(1)


class GridPool(nn.Module):
    """Adaptive average pooling of a channel-first map to a fixed ``size`` grid, then flatten."""

    def __init__(self, size: int, spatial_dims: int) -> None:
        super().__init__()
        self.size = size
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = first_tensor(x)
        pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[self.spatial_dims - 1]
        return pool(x, self.size).flatten(1)  # (N, C * size**spatial_dims)

    def extra_repr(self) -> str:
        return f"size={self.size}, spatial_dims={self.spatial_dims}"


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Per row of an ``(N, T)`` mask, the index of its last non-zero entry (0 for an empty row).

    Works for right padding (``1 1 1 0 0``) and left padding (``0 0 1 1 1``) alike.
    """
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return ((mask != 0).long() * positions).argmax(dim=1)


def first_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Per row of an ``(N, T)`` mask, the index of its first non-zero entry (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], 0, -1, device=mask.device)
    return ((mask != 0).long() * positions).argmax(dim=1)


def reads_mask(pool: nn.Module) -> bool:
    """Whether ``pool`` takes a ``mask`` keyword (an ``(N, T)`` attention mask) in ``forward``."""
    return bool(getattr(pool, "reads_mask", False))


class TokenMean(nn.Module):
    """Mean over the token axis of ``(N, T, D)``; with a mask ``(N, T)``, over real tokens only."""

    reads_mask = True

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = first_tensor(x)
        if mask is None:
            return x.mean(dim=1)
        weights = mask.to(x.dtype).unsqueeze(-1)  # (N, T, 1)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TokenSelect(nn.Module):
    """One token of ``(N, T, D)``: the first (``index=0``, CLS) or the last (``index=-1``).

    With a mask and ``index=-1``, the last real token of each sequence (right or left padding).
    """

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.reads_mask = index == -1

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = first_tensor(x)
        if mask is None or self.index == 0:
            return x[:, self.index]
        return x[torch.arange(x.shape[0], device=x.device), last_valid_index(mask)]

    def extra_repr(self) -> str:
        return f"index={self.index}"


class FinalState(nn.Module):
    """The final hidden state of a recurrent layer, as associated learning's LSTM heads read it.

    Each direction is read where it finished reading the real tokens: the forward direction at the
    last real token of the output sequence, the backward direction (bidirectional layers) at the
    first, both from the last layer's output ``(N, T, directions * H)``, using ``mask`` ``(N, T)``
    (right or left padding). Without a mask, given what an ``nn.LSTM`` / ``nn.GRU`` returns
    (``(output, (h_n, c_n))`` or ``(output, h_n)``), the last layer's ``h_n``, directions
    concatenated; from an output sequence alone, forward at the last and backward at the first
    position, which are the same states. (``h_n`` is not read when there is a mask: an RNN run over
    padded sequences without packing ends its forward direction after the padding.)
    """

    reads_mask = True

    def __init__(self, directions: int = 1) -> None:
        super().__init__()
        if directions not in (1, 2):
            raise ConfigError(f"directions must be 1 or 2, got {directions!r}")
        self.directions = directions

    def forward(self, x: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
        state = _recurrent_state(x)
        seq = first_tensor(x)
        if state is not None and (mask is None or seq.dim() != 3):  # no padding to skip, or a PackedSequence
            return state[-self.directions :].transpose(0, 1).reshape(state.shape[1], -1)
        rows = torch.arange(seq.shape[0], device=seq.device)
        if mask is None:
            last, first = torch.full_like(rows, seq.shape[1] - 1), torch.zeros_like(rows)
        else:
            last, first = last_valid_index(mask), first_valid_index(mask)
        forward_state = seq[rows, last]
        if self.directions == 1:
            return forward_state
        hidden = seq.shape[-1] // 2
        return torch.cat([forward_state[:, :hidden], seq[rows, first, hidden:]], dim=1)

    def extra_repr(self) -> str:
        return f"directions={self.directions}"


def _recurrent_state(x: Any) -> torch.Tensor | None:
    """``h_n`` ``(layers * directions, N, H)`` from an RNN's ``(output, h_n)`` or ``(output, (h_n, c_n))``."""
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        return None
    state = x[1][0] if isinstance(x[1], (tuple, list)) and x[1] else x[1]
    return state if isinstance(state, torch.Tensor) and state.dim() == 3 else None


class BatchFirst(nn.Module):
    """Runs ``pool`` on a time-major ``(T, N, D)`` sequence (an RNN with ``batch_first=False``) as ``(N, T, D)``."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.reads_mask = reads_mask(pool)

    def forward(self, x: Any, **extras: Any) -> torch.Tensor:
        if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
            x = (x[0].transpose(0, 1), *x[1:])
        elif isinstance(x, torch.Tensor):
            x = x.transpose(0, 1)
        return self.pool(x, **extras)


class FirstTensor(nn.Module):
    """The representation's first tensor as it is (no pooling): what a head that reads a whole feature map takes."""

    def forward(self, x: Any) -> torch.Tensor:
        return first_tensor(x)


class ConcatPool(nn.Module):
    """Pools each tensor crossing a multi-tensor cut with its own pool and concatenates the vectors.

    Reads ``(main, *others)``: the split's own output first, then the other per-sample tensors that
    cross the cut beside it. A mask goes to each pool that reads one and whose sequence it fits.
    """

    def __init__(self, pools: list[nn.Module]) -> None:
        super().__init__()
        self.pools = nn.ModuleList(pools)
        self.reads_mask = any(reads_mask(p) for p in pools)

    def forward(self, x: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
        parts = list(x) if isinstance(x, (tuple, list)) else [x]
        if len(parts) != len(self.pools):
            raise ConfigError(f"ConcatPool has {len(self.pools)} pools for {len(parts)} crossing tensors")
        vectors = []
        for pool, part in zip(self.pools, parts):
            fits = mask is not None and reads_mask(pool) and tuple(mask.shape) == tuple(part.shape[:2])
            vectors.append(pool(part, mask=mask) if fits else pool(part))
        return torch.cat([v.flatten(1) for v in vectors], dim=1)


class _Vector(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = first_tensor(x)
        return x if x.dim() == 2 else x.flatten(1)


def make_pool(
    kind: str | Callable[[], nn.Module] | nn.Module,
    example: torch.Tensor,
    *,
    channel_first: bool = False,
    size: int | None = None,
    directions: int = 1,
) -> nn.Module:
    """Build the module that turns a representation like ``example`` into ``(N, D)``.

    ``channel_first`` says a 3-D representation is ``(N, C, L)`` (it came from a Conv1d-like
    module) rather than a sequence ``(N, T, D)``. ``directions`` is 2 when the representation
    comes from a bidirectional RNN (read by ``"final_state"``).
    """
    if isinstance(kind, nn.Module):
        return kind
    if callable(kind) and not isinstance(kind, str):
        module = kind()
        if not isinstance(module, nn.Module):
            raise ConfigError(f"pool factory returned {type(module).__name__}, expected an nn.Module")
        return module
    if kind not in POOLS:
        raise ConfigError(f"unknown pool {kind!r}; choose one of {', '.join(POOLS)}, or pass a module factory")
    dims = example.dim()
    if kind in ("none",) or dims <= 2:
        return _Vector()
    if kind == "flatten":
        return Flatten()
    if kind == "final_state":
        if dims != 3 or channel_first:
            raise ConfigError(
                f"pool='final_state' reads a recurrent layer's state or a sequence (N, T, D); the representation "
                f"has shape {tuple(example.shape)}"
            )
        return FinalState(directions)
    sequence = dims == 3 and not channel_first
    if kind == "auto":
        kind = "mean" if sequence else "avg"
    if kind == "mean":
        if dims != 3:
            raise ConfigError(
                f"pool='mean' averages over tokens of (N, T, D); the representation has shape {tuple(example.shape)}"
            )
        return TokenMean()
    if kind in ("first", "cls", "last"):
        if dims != 3:
            raise ConfigError(
                f"pool={kind!r} selects a token of (N, T, D); the representation has shape {tuple(example.shape)}"
            )
        return TokenSelect(-1 if kind == "last" else 0)
    # "avg": a fixed grid over the spatial dims of a channel-first map
    spatial = dims - 2
    if spatial > 3:
        return Flatten()
    channels = example.shape[1]
    if size is None:
        smallest = min(int(s) for s in example.shape[2:])
        size = 1
        for g in (4, 2):
            if channels * g**spatial <= MAX_POOLED_FEATURES and g <= max(smallest, 1):
                size = g
                break
    return GridPool(size, spatial)


def output_dim(module: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """The feature size ``module`` produces for a representation shaped like ``example``.

    Runs on the meta device: no data, no compute, no change to ``module``. ``example`` may be a
    tuple of tensors (a multi-tensor cut, read by a :class:`ConcatPool`).
    """
    meta: Any = pytree.tree_map(
        lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta") if isinstance(t, torch.Tensor) else t, example
    )
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        module = copy.deepcopy(module).to("meta")
    try:
        with torch.no_grad():
            out = module(meta)
    except Exception as exc:
        shape = [tuple(t.shape) for t in example] if isinstance(example, tuple) else tuple(example.shape)
        raise ConfigError(f"{type(module).__name__} fails on a representation of shape {shape}: {exc}") from exc
    return int(first_tensor(out).shape[-1])
