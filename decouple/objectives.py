"""Local objectives: the modules a stage trains against, holding its affiliated parameters.

An objective is called with the stage's representation and the *carry*, the target-side value
that travels with the activations (the labels, or for associated learning the label embedding
of the previous layer), and returns a :class:`LocalResult`: the loss, the carry for the next
stage (detached), and optionally the logits it predicts, for metrics.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TargetError
from .heads import first_tensor
from .losses import SupConVariant, check_class_targets, logits_of, supcon_loss

__all__ = ["LocalResult", "LocalObjective", "SupConObjective", "TaskObjective", "ExitObjective", "AssociatedObjective"]


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


def _pool(pool: nn.Module, representation: Any, extras: dict[str, Any]) -> torch.Tensor:
    return pool(representation, **extras) if extras else pool(representation)


class SupConObjective(LocalObjective):
    """Projection head + supervised contrastive loss (Delog-SCL / SCPL).

    ``pool`` makes a vector of the representation, ``projector`` is the head ``g_l``; the loss
    is computed on the L2-normalised projection.
    """

    def __init__(
        self,
        pool: nn.Module,
        projector: nn.Module,
        *,
        temperature: float = 0.1,
        variant: SupConVariant = "paper",
        reduction: str = "mean",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes  # when known, targets are range-checked before any stage steps
        self.pool = pool
        self.projector = projector
        self.temperature = temperature
        self.variant = variant
        self.reduction = reduction

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        z = F.normalize(self.projector(_pool(self.pool, representation, extras)), dim=1)  # (N, D)
        labels = check_class_targets(carry, z.shape[0], method="scl", num_classes=self.num_classes)
        loss = supcon_loss(z, labels, self.temperature, variant=self.variant, reduction=self.reduction)  # type: ignore[arg-type]
        return LocalResult(loss, carry)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, variant={self.variant!r}"


class TaskObjective(LocalObjective):
    """The model's own task loss, ``loss_fn(output, target)``, for the stage that ends the model."""

    def __init__(self, loss_fn: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        self.loss_fn = loss_fn

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        loss = self.loss_fn(representation, carry)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise TargetError(f"loss_fn must return a scalar tensor, got {shape}; reduce it with .mean()")
        return LocalResult(loss, carry, logits_of(representation))

    def extra_repr(self) -> str:
        return f"loss_fn={getattr(self.loss_fn, '__name__', type(self.loss_fn).__name__)}"


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
        return LocalResult(F.cross_entropy(logits, labels), carry, logits)


class AssociatedObjective(LocalObjective):
    """One layer of associated learning (Wu et al. 2022, eq. 3).

    With ``s`` the stage's representation and ``t_prev`` the carried label embedding
    (``t_0`` = one-hot labels)::

        t = g(t_prev)                       # encoder of the target-side autoencoder
        loss = |b(s) - t|^2 + |h(t) - t_prev|^2   # associated loss + autoencoder loss

    Both terms are mean squared errors (Algorithms 1-2 of the paper). The first layer may
    reconstruct the labels with cross-entropy instead (``first_loss="ce"``, as the released code
    does), in which case ``h_1`` outputs logits. The carry handed on is ``t``, detached.
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
    ) -> None:
        super().__init__()
        self.bridge = bridge  # b_i: pooled representation -> label space
        self.encoder = encoder  # g_i: t_{i-1} -> t_i
        self.decoder = decoder  # h_i: t_i -> t_{i-1}
        self.layer = layer  # i, from 1
        self.num_classes = num_classes
        self.first_loss = first_loss
        self.target_grad = target_grad

    def forward(self, representation: Any, carry: Any, **extras: Any) -> LocalResult:
        x = first_tensor(representation)
        if self.layer == 1:
            labels = check_class_targets(carry, x.shape[0], method="al", num_classes=self.num_classes)
            t_prev = F.one_hot(labels, self.num_classes).to(x.dtype)  # t_0
        else:
            t_prev = carry
        t = self.encoder(t_prev)
        s_prime = self.bridge(representation, **extras) if extras else self.bridge(representation)
        associated = F.mse_loss(s_prime, t if self.target_grad else t.detach())
        reconstruction = self.decoder(t)
        if self.layer == 1 and self.first_loss == "ce":
            autoencoder = F.cross_entropy(reconstruction, labels)
        else:
            autoencoder = F.mse_loss(reconstruction, t_prev)
        prediction = None
        if self.layer == 1:
            with torch.no_grad():  # the forward shortcut x -> f_1 -> b_1 -> h_1, for metrics
                prediction = self.decoder(s_prime)
        return LocalResult(associated + autoencoder, t.detach(), prediction)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, first_loss={self.first_loss!r}"
