"""The local losses of dgl, predsim, infopro and deinfo against direct, loop-based readings of their papers' equations.

Each reference below is written from the equation with Python loops over samples, features and
classes (no vectorised shortcut shared with the implementation), in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import decouple
from decouple import ConfigError, InputError
from decouple.objectives.deinfo import deinfo_terms
from decouple.objectives.dgl import aux_network
from decouple.objectives.early_exit import ExitObjective
from decouple.objectives.infopro import infopro_loss
from decouple.objectives.losses import similarity_matrix
from decouple.objectives.pools import FirstTensor
from decouple.objectives.predsim import prediction_grid, predsim_loss, similarity_features

from .models import MLP, ResCNN
from .text_models import TEXT_CASES

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """-1/N sum_i log( exp(z_i[y_i]) / sum_c exp(z_i[c]) )."""
    total = 0.0
    for i in range(logits.shape[0]):
        row = [float(v) for v in logits[i]]
        top = max(row)
        log_norm = top + math.log(sum(math.exp(v - top) for v in row))
        total -= row[int(labels[i])] - log_norm
    return total / logits.shape[0]


def _adjusted_cosine(x: torch.Tensor) -> list[list[float]]:
    """S(X)_ij = <x_i - mean(x_i), x_j - mean(x_j)> / (|x_i - mean(x_i)| |x_j - mean(x_j)|)."""
    rows = []
    for i in range(x.shape[0]):
        values = [float(v) for v in x[i]]
        mean = sum(values) / len(values)
        rows.append([v - mean for v in values])
    norms = [math.sqrt(sum(v * v for v in r)) for r in rows]
    return [
        [
            max(-1.0, min(1.0, sum(a * b for a, b in zip(ri, rj)) / ((ni + 1e-8) * (nj + 1e-8))))
            for rj, nj in zip(rows, norms)
        ]
        for ri, ni in zip(rows, norms)
    ]


def _one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.tensor([[1.0 if c == int(y) else 0.0 for c in range(classes)] for y in labels], dtype=torch.float64)


def _mean_squared_difference(a: list[list[float]], b: list[list[float]]) -> float:
    n = len(a)
    return sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(n)) / (n * n)


@st.composite
def batch(draw, min_n: int = 2, max_n: int = 7, max_d: int = 6):
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(2, max_d))
    classes = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g), classes


@SETTINGS
@given(batch())
def test_similarity_matrix_is_the_adjusted_cosine(case) -> None:
    x, _, _ = case
    torch.testing.assert_close(similarity_matrix(x), torch.tensor(_adjusted_cosine(x), dtype=torch.float64))


@SETTINGS
@given(batch(), st.floats(0.0, 1.0))
def test_predsim_loss_is_the_weighted_sum_of_prediction_and_similarity_matching(case, beta: float) -> None:
    features, labels, classes = case
    logits = torch.randn(features.shape[0], classes, dtype=torch.float64)
    sim = _mean_squared_difference(_adjusted_cosine(features), _adjusted_cosine(_one_hot(labels, classes)))
    expected = (1 - beta) * _cross_entropy(logits, labels) + beta * sim
    assert float(predsim_loss(logits, features, labels, classes, beta)) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_predsim_reads_maps_through_per_channel_deviations() -> None:
    h = torch.randn(3, 5, 4, 2, dtype=torch.float64)
    expected = torch.zeros(3, 5, dtype=torch.float64)
    for i in range(3):
        for c in range(5):
            values = [float(v) for v in h[i, c].flatten()]
            mean = sum(values) / len(values)
            expected[i, c] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    torch.testing.assert_close(similarity_features(h), expected)
    few = torch.randn(3, 3, 4, 4)  # 3 channels or fewer: the flattened map, as the released code
    assert torch.equal(similarity_features(few), few.flatten(1))
    assert prediction_grid(128, 28, 28) == (4, 4)  # 128*4*4 = 2048
    assert prediction_grid(32, 14, 14) == (7, 7)  # 32*7*7 = 1568 <= 2048
    assert prediction_grid(8, 4, 4) == (4, 4)


@SETTINGS
@given(batch(), st.floats(0.0, 10.0), st.floats(0.0, 10.0))
def test_infopro_loss_weighs_reconstruction_and_cross_entropy(case, lambda_1: float, lambda_2: float) -> None:
    x, labels, classes = case
    reconstruction = torch.randn_like(x)
    logits = torch.randn(x.shape[0], classes, dtype=torch.float64)
    n, d = x.shape
    mse = sum((float(reconstruction[i, j]) - float(x[i, j])) ** 2 for i in range(n) for j in range(d)) / (n * d)
    expected = lambda_1 * mse + lambda_2 * _cross_entropy(logits, labels)
    got = infopro_loss(reconstruction, x, logits, labels, lambda_1=lambda_1, lambda_2=lambda_2)
    assert float(got) == pytest.approx(expected, rel=1e-9, abs=1e-12)

    images, probabilities = torch.rand_like(x), torch.rand_like(x).clamp(0.01, 0.99)
    bce = -sum(
        float(images[i, j]) * math.log(float(probabilities[i, j]))
        + (1 - float(images[i, j])) * math.log(1 - float(probabilities[i, j]))
        for i in range(n)
        for j in range(d)
    ) / (n * d)
    got = infopro_loss(probabilities, images, logits, labels, lambda_1=lambda_1, lambda_2=lambda_2, kind="bce")
    assert float(got) == pytest.approx(lambda_1 * bce + lambda_2 * _cross_entropy(logits, labels), rel=1e-9)


def test_infopro_bce_needs_inputs_in_the_unit_interval() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(InputError, match=r"must lie in \[0, 1\].*use reconstruction='mse'"):
        infopro_loss(
            torch.rand(4, 3), x, torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), lambda_1=1, lambda_2=1, kind="bce"
        )


@SETTINGS
@given(batch(min_n=2), st.floats(0.1, 2.0))
def test_deinfo_terms_are_similarity_matching_variance_hinge_and_covariance(case, gamma: float) -> None:
    z, labels, classes = case
    z = torch.nn.functional.normalize(z, dim=1)
    n, d = z.shape
    invariance = _mean_squared_difference(_adjusted_cosine(z), _adjusted_cosine(_one_hot(labels, classes)))
    means = [sum(float(z[i, j]) for i in range(n)) / n for j in range(d)]
    hinge = 0.0
    for j in range(d):
        var = sum((float(z[i, j]) - means[j]) ** 2 for i in range(n)) / (n - 1)
        hinge += max(0.0, gamma - math.sqrt(var + 1e-4))
    variance = hinge / d
    covariance = 0.0
    for a in range(d):
        for b in range(d):
            if a != b:
                cov = sum((float(z[i, a]) - means[a]) * (float(z[i, b]) - means[b]) for i in range(n)) / (n - 1)
                covariance += cov**2
    covariance /= d
    got = deinfo_terms(z, labels, classes, gamma=gamma)
    assert [float(t) for t in got] == pytest.approx([invariance, variance, covariance], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("variant", ["cnn", "mlp", "mlp-sr"])
def test_dgl_trains_its_auxiliary_network_with_cross_entropy(variant: str) -> None:
    torch.manual_seed(0)
    network = aux_network(variant, (6, 9, 7), nn.Identity(), 0, 5).double()
    objective = ExitObjective(network, 5, method="dgl")
    h = torch.randn(4, 6, 9, 7, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 2])
    result = objective(h, labels)
    assert float(result.loss.detach()) == pytest.approx(_cross_entropy(network(h).detach(), labels), rel=1e-9)
    layers = list(network.net)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [c.kernel_size for c in convs] == {"cnn": [(3, 3)] * 2, "mlp": [], "mlp-sr": [(1, 1)] * 3}[variant]
    assert len(linears) == (1 if variant == "cnn" else 4) and linears[0].in_features == 6 * 2 * 2  # a 2x2 grid
    assert linears[-1].out_features == 5
    assert isinstance(network.pool, FirstTensor)


def test_dgl_is_deeper_than_early_exit() -> None:
    x = torch.randn(4, 3, 8, 8)
    model = ResCNN(channels=4, blocks=2, num_classes=3)
    dgl = decouple.convert(model, "dgl", ["blocks.0"], example_inputs=(x,))
    early = decouple.convert(model, "early_exit", ["blocks.0"], example_inputs=(x,))
    depth = [
        sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in dm.stages[0].objective.modules()) for dm in (dgl, early)
    ]
    assert depth == [3, 1]
    mlp = decouple.convert(MLP([6, 8, 8]), "dgl", ["layers.0"], example_inputs=(torch.randn(4, 6),), aux="cnn")
    assert any("3-layer MLP on the pooled vector" in note for note in mlp.param_counts().notes)


def test_infopro_weights_run_linearly_from_the_first_local_stage_to_the_last() -> None:
    x = torch.randn(4, 6)
    dm = decouple.convert(
        MLP([6, 8, 8, 8, 8]), "infopro", ["layers.0", "layers.1", "layers.2"], example_inputs=(x,),
        lambda_1=6.0, lambda_2=0.0, lambda_1_last=1.0, lambda_2_last=2.0,
    )  # fmt: skip
    weights = [(s.objective.lambda_1, s.objective.lambda_2) for s in dm.stages[:-1]]
    assert weights == [(6.0, 0.0), (3.5, 1.0), (1.0, 2.0)]
    assert [s.objective_extras for s in dm.stages[:-1]] == [{"model_input": "x"}] * 3


def test_infopro_refuses_models_whose_first_input_is_token_ids() -> None:
    case = TEXT_CASES["transformer"]
    with pytest.raises(ConfigError, match=r"reconstructs the model's first input.*not a float tensor.*token ids"):
        decouple.convert(case.build(), "infopro", case.splits, case.inputs(2), num_classes=3)
