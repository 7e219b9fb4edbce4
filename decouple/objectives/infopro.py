"""The InfoPro objective: reconstruct the model's input from the stage's representation, and classify it.

Yulin Wang, Zanlin Ni, Shiji Song, Le Yang, Gao Huang. *Revisiting Locally Supervised Learning:
an Alternative to End-to-end Training.* ICLR 2021.

The InfoPro loss asks each local module to keep the information its output ``h`` has about the
input ``x`` while shedding what is irrelevant to the task; its tractable upper bound is a
weighted sum of a reconstruction loss and a task loss::

    L = lambda_1 * R(x, w(h)) + lambda_2 * CE(a(h), y)

with ``w`` a small decoder and ``a`` an auxiliary classifier (the paper's cross-entropy form;
it also has a contrastive one). After the authors' released code (``networks/auxiliary_nets.py``):
on a ``(N, C, H, W)`` map, ``w`` upsamples ``h`` bilinearly to the input's height and width, then
``Conv3x3(C, 12) - BatchNorm - ReLU - Conv3x3(12, C_in)``; ``a`` is ``Conv3x3(C, 2C, stride 2)
- BatchNorm - ReLU`` (``C, stride 1`` from 64 channels on), global averaging, ``Linear(., 128) -
ReLU - Linear(128, classes)`` (their "1c2f"). On representations that are not feature maps,
``w`` is a linear map from the pooled vector to the flattened input and ``a`` the pooled vector's
``Linear(d, 128) - ReLU - Linear(128, classes)``.

Where this reading may differ from the paper: ``R`` defaults to the mean squared error. The
released code uses binary cross-entropy of a sigmoid output against the image un-normalised to
[0, 1], which needs to know the normalisation; ``reconstruction="bce"`` does that for inputs that
already lie in [0, 1]. The paper tunes ``lambda_1, lambda_2`` per data set and number of modules
and lets them vary linearly from the first local module to the last; the method's options hold
both ends.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..tree import first_tensor
from .base import LocalObjective, LocalResult, pooled
from .losses import check_class_targets
from .precision import full_precision

__all__ = ["InfoProObjective", "MapDecoder", "VectorDecoder", "infopro_loss", "RECONSTRUCTIONS"]

RECONSTRUCTIONS = ("mse", "bce")


class MapDecoder(nn.Module):
    """``w``: upsample a ``(N, C, h, w)`` map to the input's size, then ``Conv3x3 - BN - ReLU - Conv3x3``."""

    def __init__(self, channels: int, out_channels: int, *, width: int = 12, sigmoid: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, out_channels, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []))

    def forward(self, representation: Any, like: torch.Tensor, **extras: Any) -> torch.Tensor:
        h = first_tensor(representation)
        h = F.interpolate(h, size=tuple(like.shape[-2:]), mode="bilinear", align_corners=True)
        return self.net(h)


class VectorDecoder(nn.Module):
    """``w`` for other representations: ``Linear(d, numel(x))`` on the pooled vector, shaped like the input."""

    def __init__(self, pool: nn.Module, dim: int, input_shape: tuple[int, ...], *, sigmoid: bool = False) -> None:
        super().__init__()
        self.pool = pool
        numel = 1
        for s in input_shape:
            numel *= s
        self.net = nn.Sequential(nn.Linear(dim, numel), *([nn.Sigmoid()] if sigmoid else []))

    def forward(self, representation: Any, like: torch.Tensor, **extras: Any) -> torch.Tensor:
        return self.net(pooled(self.pool, representation, extras)).view(like.shape)


@full_precision
def infopro_loss(
    reconstruction: torch.Tensor,
    x: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    lambda_1: float,
    lambda_2: float,
    kind: str = "mse",
) -> torch.Tensor:
    """``lambda_1 * R(x, reconstruction) + lambda_2 * CE(logits, labels)``; ``R`` is "mse" or "bce"."""
    target = x.to(reconstruction.dtype)
    if kind == "bce":
        if bool((target < 0).any()) or bool((target > 1).any()):
            raise InputError(
                "reconstruction='bce' compares the decoder's sigmoid output with the model input, which must lie in "
                f"[0, 1]; it has values in [{float(target.min()):.3g}, {float(target.max()):.3g}] (normalised "
                "inputs?): use reconstruction='mse'"
            )
        rec = F.binary_cross_entropy(reconstruction, target)
    else:
        rec = F.mse_loss(reconstruction, target)
    return lambda_1 * rec + lambda_2 * F.cross_entropy(logits, labels)


class InfoProObjective(LocalObjective):
    """``lambda_1 * R(x, decoder(h)) + lambda_2 * CE(classifier(h), y)`` (Wang et al. 2021).

    The model's input ``x`` (the ``forward`` argument ``input_name``) travels with the
    activations to this stage and arrives as the keyword ``model_input``.
    """

    def __init__(
        self,
        decoder: nn.Module,
        classifier: nn.Module,
        num_classes: int,
        *,
        input_name: str,
        lambda_1: float,
        lambda_2: float,
        reconstruction: str = "mse",
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.classifier = classifier  # the auxiliary classifier a(h); the exit head
        self.num_classes = num_classes
        self.model_inputs = {"model_input": input_name}
        self.lambda_1 = lambda_1
        self.lambda_2 = lambda_2
        self.reconstruction = reconstruction

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        x = extras.pop("model_input")
        labels = check_class_targets(carry, x.shape[0], method="infopro", num_classes=self.num_classes)
        logits = pooled(self.classifier, representation, extras)
        loss = infopro_loss(
            self.decoder(representation, x, **extras), x, logits, labels,
            lambda_1=self.lambda_1, lambda_2=self.lambda_2, kind=self.reconstruction,
        )  # fmt: skip
        return LocalResult(loss, carry, logits)

    def exit_head(self) -> nn.Module:
        return self.classifier

    def extra_repr(self) -> str:
        return f"lambda_1={self.lambda_1:g}, lambda_2={self.lambda_2:g}, reconstruction={self.reconstruction!r}"
