"""The early-exit objective: an auxiliary classifier on a stage's representation, trained with cross-entropy."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from ..tree import first_tensor
from .base import LocalObjective, LocalResult
from .losses import check_class_targets
from .precision import full_precision

__all__ = ["ExitObjective"]

_cross_entropy = full_precision(F.cross_entropy)


class ExitObjective(LocalObjective):
    """An auxiliary classifier on the stage's representation, trained with cross-entropy (early exit)."""

    def __init__(self, classifier: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.classifier = classifier  # pool -> linear (or MLP) -> logits
        self.num_classes = num_classes

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        x = first_tensor(representation)
        labels = check_class_targets(carry, x.shape[0], method="early_exit", num_classes=self.num_classes)
        logits = self.classifier(representation, **extras) if extras else self.classifier(representation)
        return LocalResult(_cross_entropy(logits, labels), carry, logits)
