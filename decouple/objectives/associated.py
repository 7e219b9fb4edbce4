"""Associated learning's objective: a bridge and a target-side autoencoder per layer (Wu et al. 2022, eq. 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tree import first_tensor
from .base import LocalObjective, LocalResult, pooled
from .losses import check_class_targets
from .precision import full_precision

__all__ = ["AssociatedObjective", "AssociatedExit"]

_mse = full_precision(F.mse_loss)
_cross_entropy = full_precision(F.cross_entropy)


class AssociatedObjective(LocalObjective):
    """One layer of associated learning (Wu et al. 2022, eq. 3).

    With ``s`` the stage's representation and ``t_prev`` the carried label embedding
    (``t_0`` = one-hot labels)::

        t = g(t_prev)                       # encoder of the target-side autoencoder
        loss = |b(s) - t|^2 + |h(t) - t_prev|^2   # associated loss + autoencoder loss

    Both terms are mean squared errors (Algorithms 1-2 of the paper). The first layer may
    reconstruct the labels with cross-entropy instead (``first_loss="ce"``, as the released code
    does), in which case ``h_1`` outputs logits. The carry handed on is ``t``, detached.

    ``earlier`` are the decoders ``h_{i-1} .. h_1`` of the layers before (held, not registered:
    they are those layers' parameters); the exit head is the forward shortcut through ``b_i``
    and ``h_i .. h_1`` (Algorithm 3).
    """

    def __init__(
        self,
        bridge: nn.Module,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        layer: int,
        num_classes: int,
        first_loss: str = "mse",
        target_grad: bool = True,
        earlier: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        self.bridge = bridge  # b_i: pooled representation -> label space
        self.encoder = encoder  # g_i: t_{i-1} -> t_i
        self.decoder = decoder  # h_i: t_i -> t_{i-1}
        self.layer = layer  # i, from 1
        self.num_classes = num_classes
        self.first_loss = first_loss
        self.target_grad = target_grad
        self.earlier = list(earlier)  # a plain list: h_{i-1} .. h_1 belong to the earlier layers' objectives

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        x = first_tensor(representation)
        if self.layer == 1:
            labels = check_class_targets(carry, x.shape[0], method="al", num_classes=self.num_classes)
            t_prev = F.one_hot(labels, self.num_classes).to(x.dtype)  # t_0
        else:
            t_prev = carry
        t = self.encoder(t_prev)
        s_prime = pooled(self.bridge, representation, extras)
        associated = _mse(s_prime, t if self.target_grad else t.detach())
        reconstruction = self.decoder(t)
        if self.layer == 1 and self.first_loss == "ce":
            autoencoder = _cross_entropy(reconstruction, labels)
        else:
            autoencoder = _mse(reconstruction, t_prev)
        prediction = None
        if self.layer == 1:
            with torch.no_grad():  # the forward shortcut x -> f_1 -> b_1 -> h_1, for metrics
                prediction = self.decoder(s_prime)
        return LocalResult(associated + autoencoder, t.detach(), prediction)

    def exit_head(self) -> nn.Module:
        return AssociatedExit(self.bridge, [self.decoder, *self.earlier])

    def extra_repr(self) -> str:
        return f"layer={self.layer}, first_loss={self.first_loss!r}"


class AssociatedExit(nn.Module):
    """The inference path from layer ``i``: ``h_1(.. h_i(b_i(s_i)))`` (Algorithm 3's forward shortcut)."""

    def __init__(self, bridge: nn.Module, decoders: Sequence[nn.Module]) -> None:
        super().__init__()
        self.bridge = bridge
        self.decoders = nn.ModuleList(decoders)  # h_i .. h_1

    def forward(self, representation: Any, **extras: Any) -> torch.Tensor:
        t = self.bridge(representation, **extras)  # a PooledHead: the extras (a mask) go to its pool
        for decoder in self.decoders:  # layers may sit on different devices (dm(x) runs them in place)
            device = next((p.device for p in decoder.parameters()), t.device)
            t = decoder(t.to(device))
        return t
