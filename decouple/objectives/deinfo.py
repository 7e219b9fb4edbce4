"""The DeInfoReg objective: a projection whose batch similarity matches the labels', kept spread and decorrelated.

Zih-Hao Huang, You-Teng Lin, Hung-Hsuan Chen. *DeInfoReg: A Decoupled Learning Framework with
Information Regularization for Better Training Throughput.* Neurocomputing, 2025 (arXiv:2506.18193).

With ``z`` the L2-normalised projections ``(N, D)`` of a batch and ``Y`` its one-hot labels::

    invariance = mean_ij (S(z)_ij - S(Y)_ij)^2            S: adjusted cosine similarity matrix
    variance   = mean_d max(0, gamma - sqrt(Var_n(z_nd) + eps))
    covariance = sum_{d != e} Cov(z)_de^2 / D
    L = w_inv * invariance + w_var * variance + w_cov * covariance      (all weights 1)

The invariance term pulls the batch's similarity structure to the labels' (the supervised
counterpart of VICReg's invariance term); the variance hinge and the covariance penalty are
VICReg's (Bardes, Ponce & LeCun, ICLR 2022) and keep the projections from collapsing.

Read from the paper's description and the authors' released code (``utils/utils.py``,
``DeInfoReg``), where they differ this follows VICReg's definitions: the released code divides
the variance hinge by the batch size as well and normalises the covariance by ``N`` instead of
``N - 1``; its epsilon is 1e-7 (VICReg's, used here, 1e-4). Its projector flattens the whole
feature map; here the stage's pool (``pool="flatten"`` gives the released behaviour) feeds it.
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

__all__ = ["DeInfoRegObjective", "deinfo_terms", "batchnorm_projector"]


def batchnorm_projector(in_dim: int, dims: tuple[int, ...]) -> nn.Sequential:
    """``Linear - BatchNorm1d - ReLU`` through ``dims[:-1]``, then ``Linear(., dims[-1])`` (the released projector)."""
    layers: list[nn.Module] = []
    previous = in_dim
    for d in dims[:-1]:
        layers += [nn.Linear(previous, d), nn.BatchNorm1d(d), nn.ReLU()]
        previous = d
    return nn.Sequential(*layers, nn.Linear(previous, dims[-1]))


@full_precision
def deinfo_terms(
    z: torch.Tensor, labels: torch.Tensor, num_classes: int, *, gamma: float = 1.0, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The invariance, variance and covariance terms of L2-normalised projections ``z`` (N, D)."""
    n, d = z.shape
    target = similarity_matrix(F.one_hot(labels, num_classes).to(z.dtype))
    invariance = F.mse_loss(similarity_matrix(z), target)
    if n < 2:  # no spread to measure in a batch of one: a zero that keeps the graph connected
        zero = z.sum() * 0.0
        return invariance, zero, zero
    std = torch.sqrt(z.var(dim=0) + eps)
    variance = F.relu(gamma - std).mean()
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    covariance = (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d
    return invariance, variance, covariance


class DeInfoRegObjective(LocalObjective):
    """A projection head trained with DeInfoReg's invariance, variance and covariance terms."""

    def __init__(
        self,
        pool: nn.Module,
        projector: nn.Module,
        num_classes: int,
        *,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        gamma: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.projector = projector
        self.num_classes = num_classes
        self.weights = tuple(float(w) for w in weights)  # invariance, variance, covariance
        self.gamma = gamma
        self.eps = eps

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        x = first_tensor(representation)
        labels = check_class_targets(carry, x.shape[0], method="deinfo", num_classes=self.num_classes)
        z = F.normalize(self.projector(pooled(self.pool, representation, extras)), dim=1)
        terms = deinfo_terms(z, labels, self.num_classes, gamma=self.gamma, eps=self.eps)
        loss = sum((w * t for w, t in zip(self.weights, terms)), z.new_zeros(()))
        return LocalResult(loss, carry)

    def extra_repr(self) -> str:
        return f"weights={self.weights}, gamma={self.gamma:g}"
