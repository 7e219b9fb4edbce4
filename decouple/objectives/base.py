"""The local-objective API: what a stage trains against, and what it returns per batch.

An objective is called with the stage's representation and the *carry*, the target-side value
that travels with the activations (the labels, or for associated learning the label embedding
of the previous layer), and returns a :class:`LocalResult`: the loss, the carry for the next
stage (detached by the runtime), and optionally the logits it predicts, for metrics. Its
parameters are the stage's *affiliated* parameters: they train, but inference drops them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["LocalResult", "LocalObjective", "pooled"]


@dataclass
class LocalResult:
    """What one stage's objective produced for one batch."""

    loss: torch.Tensor
    carry: Any
    prediction: torch.Tensor | None = None


class LocalObjective(nn.Module, abc.ABC):
    """Base class: ``forward(representation, carry, **extras) -> LocalResult``."""

    @abc.abstractmethod
    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        """Compute the stage's local loss from its representation and the carried target."""

    def attach_replicas(self, group: dist.ProcessGroup, replicas: int) -> None:
        """Called once when the stage trains as one of ``replicas`` data-parallel copies whose gradients are averaged.

        The stage sees ``1 / replicas`` of every global batch. An objective whose loss couples the
        samples of a batch (contrastive losses) may gather across ``group`` here; by default the
        loss stays per shard.
        """


def pooled(pool: nn.Module, representation: Any, extras: dict[str, Any]) -> torch.Tensor:
    """``pool(representation, **extras)``, leaving the keywords out when there are none."""
    return pool(representation, **extras) if extras else pool(representation)
