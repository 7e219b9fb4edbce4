"""The exit objective: an auxiliary classifier on a stage's representation, trained with cross-entropy.

``early_exit`` gives every stage a shallow classifier (pool -> linear); ``dgl`` gives it a deeper
auxiliary network (``decouple.objectives.dgl``). Both train it with cross-entropy on the stage's
representation, and both can answer from it at inference: it is the stage's exit head.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from ..tree import first_tensor
from .base import LocalObjective, LocalResult, pooled
from .losses import check_class_targets
from .precision import full_precision

__all__ = ["ExitObjective"]

_cross_entropy = full_precision(F.cross_entropy)


class ExitObjective(LocalObjective):
    """An auxiliary classifier on the stage's representation, trained with cross-entropy (early exit, DGL)."""

    def __init__(self, classifier: nn.Module, num_classes: int, *, method: str = "early_exit") -> None:
        super().__init__()
        self.classifier = classifier  # representation -> logits (pool -> linear, or an auxiliary network)
        self.num_classes = num_classes
        self.method = method

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        x = first_tensor(representation)
        labels = check_class_targets(carry, x.shape[0], method=self.method, num_classes=self.num_classes)
        logits = pooled(self.classifier, representation, extras)
        return LocalResult(_cross_entropy(logits, labels), carry, logits)

    def exit_head(self) -> nn.Module:
        return self.classifier

    def extra_repr(self) -> str:
        layers = sum(isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in self.classifier.modules())
        return f"method={self.method!r}, layers={layers}"
