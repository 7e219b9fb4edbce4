"""The predsim objective: local error signals from a prediction loss and a similarity-matching loss.

Arild Nøkland, Lars Hiller Eidnes. *Training Neural Networks with Local Error Signals.* ICML 2019.

For a stage's representation ``h`` and one-hot labels ``Y`` of a batch::

    L_pred = CE(W_pred . avgpool(h), y)
    L_sim  = || S(conv(h)) - S(Y) ||^2
    L      = (1 - beta) * L_pred + beta * L_sim           (beta = 0.99)

``S(X)`` is the adjusted cosine similarity matrix of the batch
(:func:`~decouple.objectives.losses.similarity_matrix`: each sample's features centred and
scaled to unit length, then all pairwise dot products). ``conv`` is a 3x3 convolution with as
many output channels as input channels and no bias; on vectors it is a linear map ``d -> d``.
``avgpool`` averages a feature map down until at most 2048 features remain, halving height and
width in turn (the released code's ``dim_in_decoder``); vectors are read as they are.

Where this reading may differ from the paper: the squared Frobenius norm is taken as a *mean*
over the ``N x N`` entries, as the released code (``F.mse_loss``) does, not a sum, which would
weigh ``L_sim`` N^2 times more against ``L_pred``. On feature maps with more than 3 channels and
more than one row, the released code computes ``S`` over the per-channel standard deviations
of ``conv(h)`` across positions, not over the flattened map; this module does the same. The
averaging pool is adaptive (``ceil`` sizes), where the released code pads an ``AvgPool2d``.
Sequences and other representations are pooled to a vector by the stage's pool first.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tree import first_tensor
from .base import LocalObjective, LocalResult, pooled
from .losses import check_class_targets, similarity_matrix
from .precision import full_precision

__all__ = ["PredSimObjective", "predsim_loss", "similarity_features", "prediction_grid"]


def similarity_features(h: torch.Tensor) -> torch.Tensor:
    """What ``S`` is computed over: per-channel standard deviations across positions for maps with more than
    3 channels and more than one row (the released code), else the flattened features."""
    if h.dim() == 4 and h.shape[1] > 3 and h.shape[2] > 1:
        return h.flatten(2).std(dim=2)
    return h.flatten(1)


@full_precision
def predsim_loss(
    logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, num_classes: int, beta: float = 0.99
) -> torch.Tensor:
    """``(1 - beta) * CE(logits, labels) + beta * mean((S(features) - S(onehot(labels)))^2)``."""
    target = similarity_matrix(F.one_hot(labels, num_classes).to(features.dtype))
    sim = F.mse_loss(similarity_matrix(features), target)
    return (1.0 - beta) * F.cross_entropy(logits, labels) + beta * sim


def prediction_grid(channels: int, height: int, width: int, features: int = 2048) -> tuple[int, int]:
    """The grid a ``(C, H, W)`` map is averaged to for ``L_pred``: halve height, then width, until ``C*h*w <= features``."""
    kernel_h = kernel_w = 1
    h, w = height, width
    while channels * h * w > features and kernel_h < height:
        kernel_h *= 2
        h = -(-height // kernel_h)
        if channels * h * w > features:
            kernel_w *= 2
            w = -(-width // kernel_w)
    return h, w


class PredSimObjective(LocalObjective):
    """``(1 - beta) * L_pred + beta * L_sim`` on the stage's representation (Nøkland & Eidnes 2019).

    ``predictor``: representation -> logits (avgpool then linear; the exit head).
    ``similarity``: representation -> what ``S`` is taken of (a 3x3 conv on maps, a linear map on vectors).
    """

    def __init__(self, predictor: nn.Module, similarity: nn.Module, num_classes: int, *, beta: float = 0.99) -> None:
        super().__init__()
        self.predictor = predictor
        self.similarity = similarity
        self.num_classes = num_classes
        self.beta = beta

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        x = first_tensor(representation)
        labels = check_class_targets(carry, x.shape[0], method="predsim", num_classes=self.num_classes)
        logits = pooled(self.predictor, representation, extras)
        features = similarity_features(pooled(self.similarity, representation, extras))
        return LocalResult(predsim_loss(logits, features, labels, self.num_classes, self.beta), carry, logits)

    def exit_head(self) -> nn.Module:
        return self.predictor

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
