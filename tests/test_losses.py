"""The supervised contrastive loss against a literal, loop-based reading of Delog-SCL equation 2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from decouple import TargetError
from decouple.objectives.losses import check_class_targets, supcon_loss


def reference(z: torch.Tensor, labels: torch.Tensor, tau: float, variant: str) -> float:
    """Eq. 2, one anchor at a time, in float64; per-anchor terms averaged over the batch."""
    z = z.double()
    n = len(labels)
    total = 0.0
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        denominator = sum(math.exp(float(z[i] @ z[j]) / tau) for j in range(n) if j != i)
        terms = [math.log(math.exp(float(z[i] @ z[p]) / tau) / denominator) for p in positives]
        size = len(positives) + (1 if variant == "released" else 0)
        total += -sum(terms) / size if size else 0.0
    return total / n


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 12),
    classes=st.integers(1, 4),
    tau=st.sampled_from([0.1, 0.5, 1.0]),
    variant=st.sampled_from(["paper", "released"]),
    seed=st.integers(0, 10_000),
)
def test_matches_equation_2(n: int, classes: int, tau: float, variant: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, 5, generator=g), dim=1)
    labels = torch.randint(0, classes, (n,), generator=g)
    got = supcon_loss(z, labels, tau, variant=variant)  # type: ignore[arg-type]
    assert got.item() == pytest.approx(reference(z, labels, tau, variant), rel=1e-5, abs=1e-6)


def test_sum_reduction_is_equation_2_literally() -> None:
    z = F.normalize(torch.randn(8, 4), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    mean = supcon_loss(z, labels, 0.1)
    total = supcon_loss(z, labels, 0.1, reduction="sum")
    assert total.item() == pytest.approx(8 * mean.item(), rel=1e-6)


def test_variants_differ_only_in_the_normaliser() -> None:
    z = F.normalize(torch.randn(6, 4), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])  # |P(i)| = 2 for every anchor
    paper = supcon_loss(z, labels, 0.1, variant="paper")
    released = supcon_loss(z, labels, 0.1, variant="released")
    assert released.item() == pytest.approx(paper.item() * 2 / 3, rel=1e-6)


@pytest.mark.parametrize("labels", [[3], [1, 2, 3, 4], [5, 5, 5, 5]])
def test_no_nan_without_positives_or_with_one_sample(labels: list[int]) -> None:
    z = F.normalize(torch.randn(len(labels), 4), dim=1).requires_grad_()
    loss = supcon_loss(z, torch.tensor(labels), 0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all()
    if len(set(labels)) == len(labels):
        assert loss.item() == 0.0  # every anchor lacks a positive: contributes zero


def test_large_logits_are_stable() -> None:
    z = F.normalize(torch.randn(16, 8), dim=1)
    loss = supcon_loss(z, torch.randint(0, 2, (16,)), temperature=1e-3)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "target, match",
    [
        (torch.randn(4), "integer class indices"),
        (torch.zeros(4, 3, dtype=torch.long), r"shape \(4,\)"),
        (torch.zeros(3, dtype=torch.long), r"shape \(4,\)"),
        ([0, 1, 2, 3], "tensor of class indices"),
    ],
)
def test_targets_must_be_class_indices(target, match: str) -> None:
    with pytest.raises(TargetError, match=match):
        check_class_targets(target, 4, method="scl")
