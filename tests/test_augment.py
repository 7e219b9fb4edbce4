"""Batch augmentation: crops are shifted windows, flips are mirrors, seeds fix every view, two-view batches pair each sample."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import decouple
from decouple.errors import ConfigError, InputError
from decouple.experiments.augment import (
    Augmented,
    Compose,
    RandomAffine,
    RandomCrop,
    RandomFlip,
    TwoViews,
    cifar_augment,
    mnist_augment,
    two_views,
)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(seed: int, n: int = 5, c: int = 2, h: int = 6, w: int = 7) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=_generator(seed))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000), padding=st.integers(0, 3), mode=st.sampled_from(["constant", "replicate", "reflect"])
)
def test_random_crop_is_a_shifted_window_of_the_padded_image(seed: int, padding: int, mode: str) -> None:
    x = _images(seed)
    out = RandomCrop(padding, mode=mode, fill=0.5)(x, _generator(seed))
    assert out.shape == x.shape
    pad = (padding,) * 4
    padded = (
        torch.nn.functional.pad(x, pad, mode="constant", value=0.5)
        if mode == "constant"
        else torch.nn.functional.pad(x, pad, mode=mode)
    )
    h, w = x.shape[-2:]
    for i in range(len(x)):
        windows = [
            padded[i, :, dy : dy + h, dx : dx + w] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
        ]
        assert any(torch.equal(out[i], win) for win in windows), f"sample {i} is not a window of its padded image"


def test_random_crop_moves_samples_independently() -> None:
    x = torch.arange(64 * 28 * 28, dtype=torch.float32).view(64, 1, 28, 28)
    out = RandomCrop(2, mode="replicate")(x, _generator(0))
    shifted = [not torch.equal(out[i], x[i]) for i in range(len(x))]
    assert 0 < sum(shifted) < len(x), "some samples keep their position (offset 2, 2) and others move"


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_random_flip_mirrors_or_keeps_each_sample(seed: int) -> None:
    x = _images(seed, n=16)
    out = RandomFlip(0.5)(x, _generator(seed))
    for i in range(len(x)):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    assert torch.equal(RandomFlip(1.0)(x, _generator(seed)), x.flip(-1))
    assert torch.equal(RandomFlip(0.0)(x, _generator(seed)), x)


def test_identity_affine_leaves_images_unchanged() -> None:
    x = _images(0, h=28, w=28)
    out = RandomAffine(degrees=0.0, translate=0.0, scale=(1.0, 1.0))(x, _generator(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_affine_rotates_and_keeps_the_background() -> None:
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0  # a bar
    out = RandomAffine(degrees=15.0, translate=0.1, scale=(0.9, 1.1))(x, _generator(0))
    assert out.shape == x.shape
    assert not torch.allclose(out, x)
    assert out[:, :, 0, :].abs().max() == 0  # the border repeats the (zero) background
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=0.35)  # the bar stays, roughly its size


@pytest.mark.parametrize(
    "transform", [mnist_augment(), cifar_augment(), RandomAffine(), Compose((RandomCrop(1), RandomFlip()))]
)
def test_the_same_seed_gives_the_same_views(transform: Compose) -> None:
    x = _images(1, c=3, h=32, w=32)
    assert torch.equal(transform(x, _generator(7)), transform(x, _generator(7)))
    assert not torch.equal(transform(x, _generator(7)), transform(x, _generator(8)))


def test_two_views_concatenates_views_and_repeats_labels() -> None:
    x, y = _images(2, n=6), torch.tensor([0, 1, 2, 0, 1, 2])
    views, labels = two_views(x, y, RandomCrop(1), _generator(0))
    assert views.shape == (12, *x.shape[1:])
    assert torch.equal(labels, torch.cat([y, y]))
    same, _ = two_views(x, y, lambda t, g: t)
    assert torch.equal(same, torch.cat([x, x]))


def _loader(n: int = 40, batch: int = 8, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=_generator(99))
    y = torch.arange(n) % 10  # every label once per batch of 10: no positives without a second view
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=generator)


def test_two_view_batches_give_every_anchor_a_positive() -> None:
    loader = TwoViews(_loader(batch=10), mnist_augment(), seed=0)
    assert len(loader) == 4
    for x, y in loader:
        assert x.shape[0] == y.shape[0] == 20
        counts = torch.bincount(y)
        assert bool((counts[counts > 0] >= 2).all()), "each label appears in both views"
        z = torch.nn.functional.normalize(x.flatten(1), dim=1)
        assert torch.isfinite(decouple.supcon_loss(z, y))


def test_wrapped_loaders_are_deterministic_per_seed() -> None:
    def batches(seed: int) -> list[torch.Tensor]:
        return [x for x, _ in Augmented(_loader(seed=seed), mnist_augment(), seed=seed)]

    assert all(torch.equal(a, b) for a, b in zip(batches(3), batches(3)))
    assert not all(torch.equal(a, b) for a, b in zip(batches(3), batches(4)))
    two = TwoViews(_loader(), mnist_augment(), seed=5)
    first, second = list(two), list(two)  # a second epoch continues the random stream
    assert not torch.equal(first[0][0], second[0][0]) or not torch.equal(first[0][1], second[0][1])


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        RandomCrop(2)(torch.randn(3, 28, 28))
    with pytest.raises(InputError, match="float image batch"):
        RandomFlip()(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="padding"):
        RandomCrop(-1)
    with pytest.raises(ConfigError, match="mode"):
        RandomCrop(2, mode="wrap")
    with pytest.raises(ConfigError, match="probability"):
        RandomFlip(1.5)
    with pytest.raises(ConfigError, match="scale"):
        RandomAffine(scale=(1.2, 0.8))
    with pytest.raises(InputError, match="one entry per sample"):
        two_views(torch.randn(4, 1, 5, 5), torch.zeros(3, dtype=torch.long), RandomFlip())
    with pytest.raises(ConfigError, match="needs a transform"):
        Augmented(_loader(), None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"\(x, y\) batches"):
        next(iter(TwoViews([torch.zeros(2, 1, 4, 4)])))
