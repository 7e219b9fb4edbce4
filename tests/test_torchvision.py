"""Real torchvision models: convert at stage boundaries, train, export, load back."""

from __future__ import annotations

import pytest
import torch
import torchvision

import decouple

from .helpers import assert_gradient_isolation

CASES = {
    "resnet18": ["layer1", "layer2", "layer3"],
    "vgg11_bn": ["features.7", "features.14", "features.21"],
    "mobilenet_v3_small": ["features.3", "features.6", "features.9"],
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "vgg11_bn" else n for n in sorted(CASES)]
)  # vgg11_bn's 128M parameters take ~45 s on 2 cores; -m slow runs it
def test_convert_train_export(name: str) -> None:
    model = getattr(torchvision.models, name)(num_classes=10)
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) % 4  # every class present twice: positives for SupCon
    dm = decouple.convert(
        model,
        method="scl",
        splits=CASES[name],
        example_inputs=(x[:2],),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
    )
    assert dm.num_stages == 4

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(dm.inference_module()(x), model(x), rtol=1e-4, atol=1e-5)

    dm.train()
    first = dm.train_step(x, target=y)
    assert set(first) == {"stage0", "stage1", "stage2", "stage3"}
    for _ in range(11):
        last = dm.train_step(x, target=y)
    for k in first:
        assert last[k] < first[k], f"{name} {k}: {first[k]:.3f} -> {last[k]:.3f}"
    assert_gradient_isolation(dm, x, target=y)

    fresh = getattr(torchvision.models, name)(num_classes=10)
    fresh.load_state_dict(dm.effective_state_dict(), strict=True)
    fresh.eval()
    infer = dm.inference_module()
    assert sum(p.numel() for p in infer.parameters()) == sum(p.numel() for p in fresh.parameters())
    with torch.no_grad():
        torch.testing.assert_close(infer(x), fresh(x), rtol=1e-4, atol=1e-5)


def test_balanced_splits_by_count() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    dm = decouple.convert(model, splits=4, example_inputs=(torch.randn(2, 3, 64, 64),))
    assert dm.num_stages == 4
    assert [s.spec for s in dm.program.partitions[True].splits] == ["layer1", "layer2", "layer3"]


def test_candidate_points_exclude_residual_block_internals() -> None:
    from decouple.compiler.candidates import candidate_splits
    from decouple.frontend.propagate import propagate
    from decouple.frontend.tracer import trace

    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    tr = trace(model, (x,), {}, training=True)
    propagate(tr, tr.inputs.bind((x,), {}))
    names = {c.name for c in candidate_splits(tr, model)}
    assert {"layer1", "layer2", "layer3", "layer4", "layer1.0", "layer2.0"} <= names
    assert not any(n.startswith("layer1.0.") for n in names)
