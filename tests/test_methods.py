"""Associated learning, early exit and the backprop baseline behind the same API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decouple
from decouple import ConfigError

from .helpers import assert_gradient_isolation, registered_methods, small_options
from .models import MLP, ResCNN, ShapeCarrier

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mlp_case(draw):
    depth = draw(st.integers(2, 4))
    widths = [draw(st.integers(3, 10)) for _ in range(depth + 1)]
    names = [f"layers.{i}" for i in range(depth)]
    splits = sorted(draw(st.lists(st.sampled_from(names), min_size=1, max_size=depth, unique=True)), key=names.index)
    batch = draw(st.integers(4, 8))
    classes = draw(st.integers(2, 4))
    return MLP(widths, classes), splits, torch.randn(batch, widths[0]), torch.randint(0, classes, (batch,))


def _al_chain(model: MLP, dm, x: torch.Tensor, exit_at: int) -> torch.Tensor:
    """Algorithm 3 by hand: f_1..f_l from the model's own layers, then b_l and h_l..h_1."""
    splits = [s.spec for s in dm.program.partitions[True].splits]
    last_layer = int(splits[exit_at - 1].split(".")[1])
    s = x
    for i in range(last_layer + 1):
        s = model.layers[i](s)
    t = dm.stages[exit_at - 1].objective.bridge(s)
    for i in range(exit_at, 0, -1):
        t = dm.stages[i - 1].objective.decoder(t)
    return t


@SETTINGS
@given(mlp_case())
def test_associated_learning_properties(case) -> None:
    model, splits, x, y = case
    dm = decouple.convert(model, method="al", splits=splits, example_inputs=(x,), label_dim=16)
    assert dm.num_stages == len(splits)  # the model's head is replaced, not trained
    model.eval()
    with torch.no_grad():
        for exit_at in range(1, len(splits) + 1):
            torch.testing.assert_close(dm.inference_module(exit=exit_at)(x), _al_chain(model, dm, x, exit_at))
        torch.testing.assert_close(dm.inference_module()(x), _al_chain(model, dm, x, len(splits)))
    assert_gradient_isolation(dm, x, target=y)
    counts = dm.param_counts()
    assert counts.training == counts.effective + counts.affiliated == sum(p.numel() for p in dm.parameters())
    assert counts.inference == counts.effective
    head = sum(p.numel() for p in model.head.parameters())
    assert counts.dropped >= head


@SETTINGS
@given(mlp_case())
def test_early_exit_properties(case) -> None:
    model, splits, x, y = case
    dm = decouple.convert(model, method="early_exit", splits=splits, example_inputs=(x,))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(dm.inference_module()(x), model(x))
    assert_gradient_isolation(dm, x, target=y)
    counts = dm.param_counts()
    original = sum(p.numel() for p in model.parameters())
    assert counts.inference == counts.effective == original
    assert counts.affiliated == sum(p.numel() for s in dm.stages for p in s.affiliated_parameters())
    with_exits = dm.param_counts(exit_threshold=0.5)
    assert with_exits.inference == original + counts.affiliated and with_exits.affiliated == 0


def test_backprop_equals_plain_pytorch_training() -> None:
    model = ResCNN(channels=4, blocks=2, num_classes=3)
    reference = ResCNN(channels=4, blocks=2, num_classes=3)
    reference.load_state_dict(model.state_dict())
    dm = decouple.convert(
        model, method="bp", splits=["blocks.0", "blocks.1"], example_inputs=(torch.randn(2, 3, 8, 8),)
    )
    opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
    for _step in range(4):
        x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,))
        loss = F.cross_entropy(reference(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        got = dm.train_step(x, target=y)
        assert set(got) == {"stage2"}
        assert got["stage2"] == pytest.approx(loss.item(), rel=1e-5)
    state = dm.effective_state_dict()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(state[key], value)


@pytest.mark.parametrize("method", registered_methods())
def test_local_losses_decrease_on_a_fixed_batch(method: str) -> None:
    model = ResCNN(channels=8, blocks=2, num_classes=3)
    x = torch.randn(12, 3, 8, 8)
    y = torch.arange(12) % 3
    dm = decouple.convert(
        model, method=method, splits=["blocks.0", "blocks.1"], example_inputs=(x[:2],), **small_options(method)
    )
    first = dm.train_step(x, target=y)
    for _ in range(30):
        last = dm.train_step(x, target=y)
    assert set(first) == set(last) and first
    for stage in first:
        assert last[stage] < first[stage], f"{method} {stage}: {first[stage]:.4f} -> {last[stage]:.4f}"


def test_al_options_shape_the_target_path() -> None:
    x = torch.randn(6, 3, 8, 8)
    dm = decouple.convert(
        ResCNN(channels=4, blocks=2, num_classes=3), method="al", splits=["blocks.0", "blocks.1"], example_inputs=(x,),
        label_dim=32, encoder_activation="sigmoid", decoder_activation="sigmoid", bridge_width=20, first_loss="ce",
    )  # fmt: skip
    first, second = (s.objective for s in dm.stages)
    assert first.encoder[0].in_features == 3 and first.encoder[0].out_features == 32
    assert isinstance(first.encoder[-1], torch.nn.Sigmoid)
    assert isinstance(first.decoder[-1], torch.nn.Linear)  # "ce": h_1 outputs logits
    assert isinstance(second.decoder[-1], torch.nn.Sigmoid)
    assert second.bridge.net[0].out_features == 20 and second.bridge.net[-1].out_features == 32
    loss = dm.local_losses(x, target=torch.tensor([0, 1, 2, 0, 1, 2]))[0]
    assert torch.isfinite(loss)


def test_al_carries_a_detached_label_embedding() -> None:
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    dm = decouple.convert(
        ResCNN(channels=4, blocks=2, num_classes=3), method="al", splits=["blocks.0", "blocks.1"], example_inputs=(x,)
    )
    result = dm.stages[0].run({"x": x}, y)
    assert result.result.carry.shape == (6, 128) and not result.result.carry.requires_grad


def test_al_reports_the_replaced_head() -> None:
    model = ResCNN(channels=4, blocks=2, num_classes=3)
    dm = decouple.convert(
        model, method="al", splits=["blocks.0", "blocks.1"], example_inputs=(torch.randn(2, 3, 8, 8),)
    )
    counts = dm.param_counts()
    fc = sum(p.numel() for p in model.fc.parameters())
    assert counts.dropped >= fc
    assert any("replaces the model's head" in note for note in counts.notes)
    assert "replaced by the method" in str(counts)
    assert set(dm.effective_state_dict()) == set(dm.inference_module().state_dict())


def test_early_exit_threshold_answers_per_sample() -> None:
    model = ResCNN(channels=4, blocks=2, num_classes=3)
    x = torch.randn(16, 3, 8, 8)
    dm = decouple.convert(model, method="early_exit", splits=["blocks.0", "blocks.1"], example_inputs=(x[:2],))
    for _ in range(3):
        dm.train_step(x, target=torch.arange(16) % 3)
    with torch.no_grad():
        everyone_first = dm.inference_module(exit_threshold=0.0)
        torch.testing.assert_close(everyone_first(x), dm.inference_module(exit=1)(x))
        assert everyone_first.usage == [1.0, 0.0, 0.0]
        nobody = dm.inference_module(exit_threshold=1.0)
        torch.testing.assert_close(nobody(x), dm.inference_module()(x))
        assert nobody.usage == [0.0, 0.0, 1.0]

        mixed = dm.inference_module(exit_threshold=0.4)
        out = mixed(x)
        exit1, exit2, full = dm.inference_module(exit=1)(x), dm.inference_module(exit=2)(x), dm.inference_module()(x)
        p1 = exit1.softmax(1).amax(1) >= 0.4
        p2 = exit2.softmax(1).amax(1) >= 0.4
        expected = torch.where(p1[:, None], exit1, torch.where(p2[:, None], exit2, full))
        torch.testing.assert_close(out, expected)
        assert sum(mixed.usage) == pytest.approx(1.0)


def test_early_exit_masked_mode_when_ints_cross_cuts() -> None:
    model = ShapeCarrier()
    x = torch.randn(10, 3, 8, 8)
    dm = decouple.convert(model, method="early_exit", splits=["a"], example_inputs=(x[:2],))
    module = dm.inference_module(exit_threshold=0.34)
    assert not module.subset  # x.size(0) crosses the cut: samples cannot leave the batch
    with torch.no_grad():
        exit1, full = dm.inference_module(exit=1)(x), dm.inference_module()(x)
        confident = exit1.softmax(1).amax(1) >= 0.34
        torch.testing.assert_close(module(x), torch.where(confident[:, None], exit1, full))


def test_methods_need_the_number_of_classes() -> None:
    class Pairs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 6)
            self.b = torch.nn.Linear(6, 6)

        def forward(self, x):
            h = self.b(torch.relu(self.a(x)))
            return h.view(-1, 2, 3)

    x = torch.randn(4, 4)
    for method in ("al", "early_exit"):
        with pytest.raises(ConfigError, match=r"pass num_classes=C"):
            decouple.convert(Pairs(), method=method, splits=["a"], example_inputs=(x,), loss_fn=lambda o, t: o.sum())
        dm = decouple.convert(
            Pairs(), method=method, splits=["a"], example_inputs=(x,), num_classes=5, loss_fn=lambda o, t: o.sum()
        )
        assert dm.num_stages == (1 if method == "al" else 2)


def test_exit_errors() -> None:
    x = torch.randn(4, 3, 8, 8)
    scl = decouple.convert(ResCNN(channels=4, blocks=2, num_classes=3), splits=["blocks.0"], example_inputs=(x,))
    with pytest.raises(ConfigError, match="has no early exits"):
        scl.inference_module(exit=1)
    with pytest.raises(ConfigError, match="exit_threshold needs exit classifiers"):
        scl.inference_module(exit_threshold=0.5)
    ee = decouple.convert(
        ResCNN(channels=4, blocks=2, num_classes=3), method="early_exit", splits=["blocks.0"], example_inputs=(x,)
    )
    with pytest.raises(ConfigError, match=r"valid exits are \[1\]"):
        ee.inference_module(exit=3)
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        ee.inference_module(exit_threshold=2.0)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"method": "al", "label_dim": 0}, "label_dim must be a positive"),
        ({"method": "al", "first_loss": "kl"}, "first_loss must be"),
        ({"method": "al", "encoder_activation": "swish"}, "encoder_activation must be one of"),
        ({"method": "early_exit", "exit_head": "tree"}, "exit_head must be"),
        ({"method": "bp", "temperature": 0.1}, "unknown option.*'temperature' for method 'bp'"),
    ],
)
def test_bad_method_options(options, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        decouple.convert(MLP([4, 6, 4]), splits=["layers.0"], example_inputs=(torch.randn(2, 4),), **options)


@pytest.mark.parametrize("method", ["dgl", "predsim", "infopro"])
def test_methods_with_classifier_heads_serve_exits(method: str) -> None:
    """dgl, predsim and infopro train a classifier per stage: it answers exits like early_exit's."""
    x = torch.randn(8, 3, 8, 8)
    dm = decouple.convert(ResCNN(channels=4, blocks=2, num_classes=3), method, ["blocks.0", "blocks.1"], (x[:2],))
    dm.train_step(x, target=torch.arange(8) % 3)
    with torch.no_grad():
        first = dm.inference_module(exit=1)(x)
        assert first.shape == (8, 3)
        torch.testing.assert_close(first, dm.stages[0].objective.exit_head().eval()(dm.stages[0].eval()({"x": x})[1]))
        everyone = dm.inference_module(exit_threshold=0.0)
        torch.testing.assert_close(everyone(x), first)
        assert everyone.usage == [1.0, 0.0, 0.0]
    exits = {id(p): p.numel() for s in dm.stages[:-1] for p in s.objective.exit_head().parameters()}
    assert dm.param_counts(exit_threshold=0.5).affiliated == dm.param_counts().affiliated - sum(exits.values())


@pytest.mark.parametrize("method, options", [("deinfo", {"head_dims": (8,)}), ("al", {}), ("scl", {})])
def test_methods_without_exits_refuse_exit_threshold(method: str, options: dict) -> None:
    x = torch.randn(4, 3, 8, 8)
    dm = decouple.convert(ResCNN(channels=4, blocks=2, num_classes=3), method, ["blocks.0"], (x,), **options)
    with pytest.raises(ConfigError, match="exit_threshold needs exit classifiers on every stage but the last"):
        dm.inference_module(exit_threshold=0.5)
