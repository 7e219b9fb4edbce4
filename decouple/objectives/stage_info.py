"""What a method's ``make_objective`` learns about the stage it builds a local objective for.

``decouple.convert(model, method=make_objective, ...)`` calls ``make_objective(info)`` once per
stage that trains a local objective, in stage order, with a :class:`StageInfo`; it returns a
:class:`~decouple.objectives.base.LocalObjective` or ``None``. Example values are the fake
tensors of shape propagation: read their ``shape`` and ``dtype``, do not compute with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import LocalObjective

__all__ = ["StageInfo"]


@dataclass(frozen=True, eq=False)
class StageInfo:
    """One stage, as a local head needs to know it.

    index / num_stages: the stage's position among the stages that train (``0 .. num_stages - 1``).
    representation: an example of what the stage hands its objective (a fake tensor, or a
    structure of them: an LSTM's ``(output, (h, c))``; at a multi-tensor cut, ``(main, *others)``:
    the split's own output, then the other per-sample tensors crossing beside it).
    example: the representation's (main) tensor as the pool reads it, batch first (its ``shape`` and ``dtype``).
    num_classes: ``convert(num_classes=...)``, else the width of a ``(batch, classes)`` model output, else None.
    device: where the stage (and its objective) runs.
    pool: the module the method's options ask for (``pool``, ``pool_size``, ``mask``, ``crossing``) that
    turns the representation into ``(N, pooled_dim)`` (at a multi-tensor cut, each crossing tensor pooled
    and the vectors concatenated); call it as ``pool(representation, mask=mask)`` when
    ``mask`` is not None (forward receives the mask as the keyword ``mask``).
    mask: an example of the ``(N, T)`` attention mask the pool reads, or None.
    inputs: examples of the model's ``forward`` inputs, by argument name, in ``forward`` order.
    output: an example of what the model returns.
    options: the method's options (its dataclass, filled from ``convert``'s keyword arguments).
    previous: the objectives made for the stages before this one (None where a stage has none).
    method: the method's name, for messages.
    notes: the conversion's notes (``param_counts()`` and ``decouple inspect`` print them); add with :meth:`note`.
    """

    index: int
    num_stages: int
    representation: Any
    example: torch.Tensor
    num_classes: int | None
    device: torch.device
    pool: nn.Module
    pooled_dim: int
    mask: torch.Tensor | None
    inputs: Mapping[str, Any]
    output: Any
    options: Any
    previous: tuple[LocalObjective | None, ...]
    method: str
    notes: list[str] = field(default_factory=list)

    @property
    def last(self) -> bool:
        """Whether this is the last stage that trains (for a method that replaces the head: the one inference answers from)."""
        return self.index == self.num_stages - 1

    @property
    def feature_map(self) -> bool:
        """Whether the representation is a ``(N, C, H, W)`` feature map."""
        return self.example.dim() == 4

    def note(self, text: str) -> None:
        """Tell the user something about this stage's objective (a line of the conversion's notes)."""
        self.notes.append(f"stage {self.index}: {text}")

    def require_classes(self) -> int:
        """``num_classes``, or a ``ConfigError`` saying how to give it."""
        if self.num_classes is not None:
            return self.num_classes
        shape = tuple(self.output.shape) if isinstance(self.output, torch.Tensor) else type(self.output).__name__
        raise ConfigError(
            f"method {self.method!r} needs the number of classes, and it cannot be read from the model's output "
            f"({shape}, expected a (batch, classes) logits tensor); pass num_classes=C to convert()"
        )
