"""The local-objective API: what a stage trains against, and what it returns per batch.

An objective is called with the stage's representation and the *carry*, the target-side value
that travels with the activations (the labels, or for associated learning the label embedding
of the previous layer), and returns a :class:`LocalResult`: the loss, the carry for the next
stage (detached by the runtime), and optionally the logits it predicts, for metrics. Its
parameters are the stage's *affiliated* parameters: they train, but inference drops them.

Two optional hooks tell the compiler more:

- ``model_inputs`` maps a keyword of ``forward`` to a ``forward`` argument of the *model*
  (``{"image": "x"}``): that input travels with the activations to the stage, like the targets
  do, and ``forward`` receives it under the keyword (InfoPro reconstructs the input this way).
- ``exit_head()`` returns the module that answers from the stage's representation at inference
  (an early exit: ``inference_module(exit=l)``, ``exit_threshold=p``), or ``None``. A method that
  replaces the model's head answers through its last stage's exit head.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["LocalResult", "LocalObjective", "pooled"]


@dataclass
class LocalResult:
    """What one stage's objective produced for one batch.

    ``loss``: a scalar tensor; the stage backpropagates it into its own parameters.
    ``carry``: the target-side value handed to the next stage (usually the labels, unchanged).
    ``prediction``: ``(N, C)`` logits the objective predicts, for metrics (optional).
    """

    loss: torch.Tensor
    carry: Any
    prediction: torch.Tensor | None = None


class LocalObjective(nn.Module, abc.ABC):
    """Base class of a stage's local objective: ``forward(representation, carry, **extras) -> LocalResult``.

    ``extras`` are keyword inputs the compiler fills from the stage's message: ``mask`` (the
    attention mask the stage's pool reads, when one is carried; see ``StageInfo.mask``) and the
    keywords of :attr:`model_inputs`. Accept ``**extras`` even when you read none of them.
    """

    #: keyword of ``forward`` -> ``forward`` argument of the model, carried to this stage
    model_inputs: Mapping[str, str] = MappingProxyType({})

    @abc.abstractmethod
    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        """Compute the stage's local loss from its representation and the carried target."""

    def attach_replicas(self, group: dist.ProcessGroup, replicas: int) -> None:
        """Called once when the stage trains as one of ``replicas`` data-parallel copies whose gradients are averaged.

        The stage sees ``1 / replicas`` of every global batch. An objective whose loss couples the
        samples of a batch (contrastive losses) may gather across ``group`` here; by default the
        loss stays per shard.
        """

    def exit_head(self) -> nn.Module | None:
        """The module answering from this stage's representation at inference, or ``None`` (no exit).

        It is called as ``module(representation, **extras)`` (the extras without the model
        inputs) and returns what inference returns from this exit: ``(N, C)`` logits for an
        early exit. It may share modules with this objective (and, for a method that replaces
        the model's head, with earlier stages' objectives), but must not be a registered
        submodule of it, or its parameters would count twice.
        """
        return None


def pooled(pool: nn.Module, representation: Any, extras: dict[str, Any]) -> torch.Tensor:
    """``pool(representation, **extras)``, leaving the keywords out when there are none."""
    return pool(representation, **extras) if extras else pool(representation)
