"""Loss functions of the local objectives.

``supcon_loss`` is the supervised contrastive loss of Khosla et al. exactly as equation 2 of
the Delog-SCL paper (positives exclude the anchor, the denominator sums over every other sample)
with the released code's normaliser as an option. ``default_task_loss`` is what the last stage
uses when the user gives no ``loss_fn``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..errors import TargetError
from .precision import full_precision

__all__ = [
    "supcon_loss",
    "default_task_loss",
    "logits_of",
    "check_class_targets",
    "check_task_targets",
    "similarity_matrix",
    "SupConVariant",
]

SupConVariant = Literal["paper", "released"]


@full_precision
def supcon_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    *,
    variant: SupConVariant = "paper",
    reduction: Literal["mean", "sum"] = "mean",
    anchors: slice | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss of L2-normalised embeddings ``z`` (N, D) with class ``labels`` (N,).

    For anchor ``i`` with positives ``P(i)`` (same label, ``i`` excluded)::

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{j != i} exp(z_i.z_j / t) )

    ``variant="paper"`` divides by ``|P(i)|`` (Delog-SCL eq. 2; SCPL eq. 2); ``"released"`` divides
    by ``|P(i)| + 1`` as the authors' released code does (its mask counts the anchor itself).
    An anchor with no positive in the batch contributes zero, never NaN. ``reduction="sum"`` is
    eq. 2 literally; ``"mean"`` (default, as both released codes) divides by the batch size, which
    keeps the loss scale independent of the batch size. ``anchors`` (a slice of rows) limits the
    anchors to those rows, each still contrasted with every sample (a data-parallel replica's share
    of a global batch); the reduction runs over those anchors.
    """
    if z.dim() != 2:
        raise ValueError(f"supcon_loss expects embeddings of shape (N, D), got {tuple(z.shape)}")
    n = z.shape[0]
    labels = labels.reshape(-1)
    if labels.shape[0] != n:
        raise TargetError(f"supcon_loss got {n} embeddings but {labels.shape[0]} labels")
    if n < 2:
        return z.sum() * 0.0  # no pair to contrast: a zero that keeps the graph connected
    if anchors is None:
        rows, row_labels = z, labels
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    else:
        rows, row_labels = z[anchors], labels[anchors]
        index = torch.arange(n, device=z.device)[anchors]
        self_mask = index[:, None] == torch.arange(n, device=z.device)[None, :]  # (A, N)
    logits = (rows @ z.T) / temperature  # (A, N): every anchor against every sample
    log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator  # (A, N)
    positives = (row_labels[:, None] == labels[None, :]) & ~self_mask
    num_pos = positives.sum(dim=1)
    summed = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    normaliser = (num_pos + 1 if variant == "released" else num_pos).clamp(min=1).to(summed.dtype)
    per_anchor = -summed / normaliser  # zero where an anchor has no positive
    if reduction == "sum":
        return per_anchor.sum()
    return per_anchor.mean()


def similarity_matrix(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The batch's adjusted cosine similarity (correlation) matrix: ``(N, D) -> (N, N)``, entries in [-1, 1].

    Each row is centred over its features and scaled to unit length, then ``S = X X^T``: S(X) of
    Nøkland & Eidnes (2019), which DeInfoReg's released code uses as well. Applied to one-hot labels
    it gives the label similarity matrix that predsim and deinfo pull the representations' matrix towards.
    """
    centred = x - x.mean(dim=1, keepdim=True)
    unit = centred / (centred.norm(dim=1, keepdim=True) + eps)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def check_class_targets(target: Any, batch: int, *, method: str, num_classes: int | None = None) -> torch.Tensor:
    """Validate that ``target`` holds one integer class index per sample."""
    if not isinstance(target, torch.Tensor):
        raise TargetError(
            f"method {method!r} needs targets as a tensor of class indices, got {type(target).__name__}; "
            "pass target=torch.tensor([...]) with one integer label per sample"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TargetError(
            f"method {method!r} needs integer class indices as targets, got dtype {target.dtype}; "
            "convert one-hot or probability targets with target.argmax(dim=1), or labels with .long()"
        )
    if target.dim() != 1 or target.shape[0] != batch:
        raise TargetError(
            f"method {method!r} needs targets of shape ({batch},) (one class index per sample), "
            f"got {tuple(target.shape)}"
        )
    if num_classes is not None and target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise TargetError(
            f"targets must be class indices in [0, {num_classes}), got values in "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    return target


def logits_of(output: Any) -> torch.Tensor | None:
    """The logits in a model's output: the output itself when it is a tensor, else its ``logits``.

    Hugging Face models return a ``ModelOutput`` (a dict with attribute access) whose ``logits``
    field holds them; dicts with a ``"logits"`` key work the same, and so do the named tuples of
    models with auxiliary heads (torchvision's ``InceptionOutputs``, ``GoogLeNetOutputs``).
    ``None`` when there are none.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


@full_precision
def default_task_loss(output: Any, target: Any) -> torch.Tensor:
    """Cross-entropy of ``(N, C)`` logits against class indices (or class probabilities).

    The logits are the output itself or its ``logits`` field (:func:`logits_of`); auxiliary heads
    (``aux_logits``) are left out: give a ``loss_fn`` that weighs them in to train them.
    """
    logits = logits_of(output)
    if logits is None:
        raise TargetError(
            f"the default task loss needs the model to return a logits tensor (or an output with a .logits "
            f"tensor), but it returns {type(output).__name__}; pass loss_fn=lambda output, target: ... to convert()"
        )
    check_task_targets(logits, target)
    return F.cross_entropy(logits, target)


def check_task_targets(logits: torch.Tensor, target: Any) -> None:
    """Validate targets of the default cross-entropy: class indices ``(N, ...)`` or probabilities like the logits."""
    if not isinstance(target, torch.Tensor):
        raise TargetError(
            f"the default task loss needs targets as a tensor, got {type(target).__name__}; pass "
            "target=torch.tensor([...]) with one class index per sample"
        )
    if logits.dim() < 2:
        return  # an unbatched output: cross-entropy checks it
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise TargetError(
                f"floating-point targets are read as class probabilities and must have the logits' shape "
                f"{tuple(logits.shape)}, got {tuple(target.shape)}; for class indices pass integer targets (target.long())"
            )
        return
    if target.is_complex() or target.dtype == torch.bool:
        raise TargetError(
            f"targets of dtype {target.dtype} are neither class indices nor probabilities; use target.long()"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise TargetError(
            f"the model returns logits of shape {tuple(logits.shape)}, so class-index targets must have shape "
            f"{expected}, got {tuple(target.shape)}"
        )
    classes = logits.shape[1]
    valid = target[target != -100]  # cross-entropy's default ignore_index
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= classes):
        raise TargetError(
            f"targets must be class indices in [0, {classes}) (or -100 to ignore a sample), got values in "
            f"[{int(valid.min())}, {int(valid.max())}]"
        )
