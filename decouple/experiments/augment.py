"""Batch augmentation with torch ops, and two-view batches for supervised contrastive training.

The papers train SupCon heads on two augmented views of every image concatenated into one batch,
so each sample has at least one positive. Transforms here act on whole ``(N, C, H, W)`` batches
(no PIL, no per-sample Python loop), draw from an explicit ``torch.Generator`` so a seed fixes
every view, and run wherever the batch lives (CPU or GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError

__all__ = [
    "BatchTransform",
    "RandomCrop",
    "RandomFlip",
    "RandomAffine",
    "Compose",
    "mnist_augment",
    "cifar_augment",
    "two_views",
    "TwoViews",
    "Augmented",
]

#: ``transform(x, generator) -> x'`` on an ``(N, C, H, W)`` float batch
BatchTransform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]

_PAD_MODES = ("constant", "replicate", "reflect")


def _check_images(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(
            f"{what} takes a float image batch (N, C, H, W), got {shape}; add batch/channel dims with x[None] or x.unsqueeze(1)"
        )
    return x


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """``n`` draws from U(low, high), drawn on the CPU generator and moved to ``like``'s device."""
    return (torch.rand(n, generator=generator) * (high - low) + low).to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class RandomCrop:
    """Pad every side by ``padding`` pixels, then crop back to the original size at a random offset per sample.

    ``mode``: "constant" (pads with ``fill``; 0 is the mean of a normalised image), "replicate"
    (repeats the border: background for digits), or "reflect".
    """

    padding: int = 4
    mode: str = "constant"
    fill: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or self.padding < 0:
            raise ConfigError(f"RandomCrop padding must be an int >= 0, got {self.padding!r}")
        if self.mode not in _PAD_MODES:
            raise ConfigError(f"RandomCrop mode must be one of {_PAD_MODES}, got {self.mode!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = _check_images(x, "RandomCrop")
        p = self.padding
        if p == 0:
            return x
        n, c, h, w = x.shape
        if self.mode == "constant":
            padded = F.pad(x, (p, p, p, p), mode="constant", value=self.fill)
        else:
            padded = F.pad(x, (p, p, p, p), mode=self.mode)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]


@dataclass(frozen=True)
class RandomFlip:
    """Mirror each sample left-right with probability ``p`` (natural images; not for digits)."""

    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"RandomFlip p must be a probability in [0, 1], got {self.p!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = _check_images(x, "RandomFlip")
        flip = (torch.rand(x.shape[0], generator=generator) < self.p).to(x.device)
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


@dataclass(frozen=True)
class RandomAffine:
    """A small random rotation (``degrees``), shift (``translate``, a fraction of the size) and
    zoom (``scale`` range) per sample, resampled bilinearly; outside pixels repeat the border."""

    degrees: float = 10.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        if self.degrees < 0 or not 0 <= self.translate < 1:
            raise ConfigError(
                f"RandomAffine needs degrees >= 0 and 0 <= translate < 1, got {self.degrees!r}, {self.translate!r}"
            )
        low, high = self.scale
        if not 0 < low <= high:
            raise ConfigError(
                f"RandomAffine scale must be a range (low, high) with 0 < low <= high, got {self.scale!r}"
            )

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = _check_images(x, "RandomAffine")
        n = x.shape[0]
        angle = _uniform(n, -self.degrees, self.degrees, generator, x) * (math.pi / 180.0)
        zoom = _uniform(n, self.scale[0], self.scale[1], generator, x)
        shift = torch.stack([_uniform(n, -self.translate, self.translate, generator, x) for _ in range(2)], 1) * 2.0
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )  # (N, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class Compose:
    """Apply ``transforms`` in order."""

    transforms: tuple[BatchTransform, ...]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for transform in self.transforms:
            x = transform(x, generator)
        return x


def mnist_augment() -> Compose:
    """Digits: shifts of up to 2 pixels, the border repeated (no flips: a mirrored digit is another glyph).

    On the bundled subset this helped every method more than :class:`RandomAffine` did at a few
    epochs (see ``benchmarks/RESULTS.md``).
    """
    return Compose((RandomCrop(2, mode="replicate"),))


def cifar_augment() -> Compose:
    """Natural images, as the papers: random crop with 4 pixels of padding and a horizontal flip."""
    return Compose((RandomCrop(4, mode="constant", fill=0.0), RandomFlip(0.5)))


def two_views(
    x: torch.Tensor, y: torch.Tensor, transform: BatchTransform, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cat[t(x), t(x)], cat[y, y])``: two independent views of every sample, labels repeated."""
    x = _check_images(x, "two_views")
    if y.shape[:1] != x.shape[:1]:
        raise InputError(
            f"two_views: x has {x.shape[0]} samples but y has {tuple(y.shape)}; pass labels with one entry per sample"
        )
    return torch.cat([transform(x, generator), transform(x, generator)]), torch.cat([y, y])


def _seeded(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


class _Wrapped:
    """A loader of ``(x, y)`` batches whose images are transformed on the fly from a seeded generator."""

    def __init__(self, loader: Iterable[Any], transform: BatchTransform | None, seed: int) -> None:
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform must be callable as transform(x, generator), got {type(transform).__name__}")
        self.loader = loader
        self.transform = transform
        self.generator = _seeded(seed)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def _pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise InputError(
                    f"{type(self).__name__} wraps a loader of (x, y) batches; got a batch of type {type(batch).__name__}"
                )
            yield batch[0], batch[1]


class TwoViews(_Wrapped):
    """Wrap a loader of ``(x, y)``: each batch becomes ``(cat[t(x), t(x)], cat[y, y])`` (twice the size).

    With ``transform=None`` the two views are the same images (duplicated batch). The generator
    is seeded once, so re-iterating continues the random stream: same seed, same epochs.
    """

    def __init__(self, loader: Iterable[Any], transform: BatchTransform | None = None, *, seed: int = 0) -> None:
        super().__init__(loader, transform, seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        identity: BatchTransform = lambda x, g: x
        for x, y in self._pairs():
            yield two_views(x, y, self.transform or identity, self.generator)


class Augmented(_Wrapped):
    """Wrap a loader of ``(x, y)``: each batch becomes ``(t(x), y)`` (one view, same size)."""

    def __init__(self, loader: Iterable[Any], transform: BatchTransform, *, seed: int = 0) -> None:
        if transform is None:
            raise ConfigError(
                "Augmented needs a transform, e.g. decouple.augment.mnist_augment(); iterate the loader itself for no augmentation"
            )
        super().__init__(loader, transform, seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        transform = self.transform
        assert transform is not None
        for x, y in self._pairs():
            yield transform(x, self.generator), y
