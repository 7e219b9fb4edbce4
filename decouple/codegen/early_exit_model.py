"""Per-sample early-exit inference (BranchyNet-style): each sample answers at its first confident exit.

After stage ``l`` the exit classifier ``l`` scores the batch; samples whose top softmax
probability reaches the threshold take that exit's logits, the rest go on to the next stage, and
the model's own output answers whatever is left. When every value crossing the cuts is a tensor
with the batch as its first dimension, confident samples leave the batch ("subset" mode, which
saves their compute); otherwise (ints like ``x.size(0)`` cross a cut) every sample runs every
stage and the answers are selected per sample ("masked" mode): the same results, no savings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError
from ..frontend.inputs import InputSpec
from ..objectives.losses import logits_of
from .stage import StageIO

__all__ = ["EarlyExitModel", "batch_major"]


def batch_major(ios: Sequence[StageIO], batch: int) -> bool:
    """Whether every message value is a tensor whose first dimension is the batch."""
    for io in ios:
        for name in io.message_out:
            shape = io.shapes.get(name)
            if not (isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[0], tuple)):
                return False
            if not shape[0] or shape[0][0] != batch:
                return False
    return True


class EarlyExitModel(nn.Module):
    """The eval-mode model with exits: ``forward`` returns logits; ``usage`` counts exits taken."""

    stages: nn.ModuleList
    exits: nn.ModuleList
    counts: torch.Tensor

    def __init__(
        self,
        stages: Sequence[fx.GraphModule],
        ios: Sequence[StageIO],
        exits: Sequence[nn.Module],
        extras: Sequence[dict[str, str]],
        inputs: InputSpec,
        threshold: float,
        subset: bool,
    ) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"exit_threshold must be a probability in [0, 1], got {threshold!r}")
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)
        self.ios = list(ios)
        self.extras = [dict(e) for e in extras]
        self.inputs = inputs
        self.threshold = float(threshold)
        self.subset = subset
        self.register_buffer("counts", torch.zeros(len(stages), dtype=torch.long), persistent=False)

    @property
    def usage(self) -> list[float]:
        """Share of the samples seen so far that left at each exit (the last entry: the full model)."""
        total = int(self.counts.sum())
        return [int(c) / total if total else 0.0 for c in self.counts]

    def reset_usage(self) -> None:
        self.counts.zero_()

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        message = self.inputs.bind(args, kwargs)
        batch = next(v.shape[0] for v in message.values() if isinstance(v, torch.Tensor))
        answer: torch.Tensor | None = None
        pending = torch.arange(batch)  # original indices of samples still without an answer
        live = torch.ones(batch, dtype=torch.bool)  # masked mode: rows still without an answer
        for k, (stage, io) in enumerate(zip(self.stages, self.ios)):
            produced = stage(*[message[n] for n in io.inputs])
            if io.last:
                assert answer is not None, "a model with exits has at least two stages"
                logits = _logits(produced)
                rows = pending.to(answer.device)
                answer[rows] = (logits if self.subset else logits[rows.to(logits.device)]).to(answer.dtype)
                self.counts[k] += len(pending)
                break
            nxt = {n: produced[n] if n in produced else message[n] for n in io.message_out}
            rep = io.head_input(message, nxt)
            kw = {a: nxt.get(b, message.get(b)) for a, b in self.extras[k].items()}
            logits = self.exits[k](rep, **kw) if kw else self.exits[k](rep)
            confident = torch.softmax(logits.float(), dim=1).amax(dim=1) >= self.threshold
            if not self.subset:
                confident &= live.to(confident.device)
            rows = confident.nonzero().flatten()
            if answer is None:
                answer = logits.new_zeros((batch, logits.shape[1]))
            if self.subset:
                answer[pending[rows.cpu()].to(answer.device)] = logits[rows].to(answer.dtype)
                keep = (~confident).nonzero().flatten()
                pending = pending[keep.cpu()]
                nxt = {n: v[keep.to(v.device)] if isinstance(v, torch.Tensor) else v for n, v in nxt.items()}
            else:
                answer[rows.to(answer.device)] = logits[rows].to(answer.dtype)
                live &= ~confident.cpu()
                pending = torch.nonzero(live).flatten()
            self.counts[k] += len(rows)
            message = nxt
            if len(pending) == 0:
                break
        assert answer is not None
        return answer


def _logits(output: Any) -> torch.Tensor:
    logits = logits_of(output)
    if logits is not None and logits.dim() == 2:
        return logits
    raise ConfigError(
        f"early-exit inference needs the model to return (batch, classes) logits, it returns {type(output).__name__}"
    )
