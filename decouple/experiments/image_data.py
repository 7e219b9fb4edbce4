"""Image-classification data for the demo and the examples: the bundled MNIST subset, or CIFAR-10/100.

MNIST ships with the package (offline). CIFAR comes from torchvision's loaders (``download=True``
for users with a network); its uint8 arrays are read once into normalised tensors, so batches
are sliced from memory and augmented with the batch transforms of :mod:`decouple.augment`
instead of per-image PIL calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import ConfigError, close_matches
from .augment import Compose, cifar_augment, mnist_augment
from .datasets import mnist_loaders

__all__ = ["ImageData", "DATASETS", "CIFAR_MEAN", "CIFAR_STD", "image_data", "load_cifar"]

DATASETS = ("mnist", "cifar10", "cifar100")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class ImageData:
    """Train and test loaders of ``(x, y)`` batches and what a model needs to know about the images."""

    name: str
    train: DataLoader
    test: DataLoader
    num_classes: int
    channels: int
    size: int
    augment: Compose

    @property
    def example(self) -> torch.Tensor:
        """A zero batch of two images, for ``convert(example_inputs=...)``."""
        return torch.zeros(2, self.channels, self.size, self.size)

    def describe(self) -> str:
        return f"{self.name}: {len(self.train.dataset):,} train / {len(self.test.dataset):,} test images, {self.channels}x{self.size}x{self.size}, {self.num_classes} classes"  # type: ignore[arg-type]


def _torchvision_cifar(name: str) -> Any:
    import torchvision

    return torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100


def load_cifar(name: str, root: str, split: str, *, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 ``split`` ("train" or "test") as normalised float32 (N, 3, 32, 32) and int64 labels."""
    try:
        dataset = _torchvision_cifar(name)(root, train=split == "train", download=download)
    except RuntimeError as exc:
        raise ConfigError(
            f"cannot load {name} from {root!r} ({exc}); pass --data-root to a folder holding it, or allow the download"
        ) from exc
    x = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.as_tensor(dataset.targets, dtype=torch.int64)


def _limit(x: torch.Tensor, y: torch.Tensor, limit: int | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if limit is None:
        return x, y
    if limit < 1 or limit > len(y):
        raise ConfigError(f"{name} must be between 1 and {len(y)}, got {limit}")
    return x[:limit], y[:limit]


def _cifar(
    name: str, root: str, batch_size: int, train_limit: int | None, test_limit: int | None, seed: int, download: bool
) -> ImageData:
    x_train, y_train = _limit(*load_cifar(name, root, "train", download=download), train_limit, "train_limit")
    x_test, y_test = _limit(*load_cifar(name, root, "test", download=download), test_limit, "test_limit")
    generator = torch.Generator()
    generator.manual_seed(seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=batch_size)
    classes = 10 if name == "cifar10" else 100
    return ImageData(name, train, test, classes, 3, 32, cifar_augment())


def image_data(
    dataset: str = "mnist",
    *,
    data_root: str | None = None,
    batch_size: int = 128,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> ImageData:
    """Loaders for ``dataset``: "mnist" (bundled), or "cifar10" / "cifar100" from ``data_root``.

    The training loader reshuffles every epoch from a generator seeded by ``seed``;
    ``*_limit`` keeps the first N samples.
    """
    if dataset not in DATASETS:
        raise ConfigError(
            f"unknown dataset {dataset!r}{close_matches(dataset, DATASETS)}; choose from {', '.join(DATASETS)}"
        )
    if dataset == "mnist":
        train, test = mnist_loaders(batch_size, train_limit=train_limit, test_limit=test_limit, seed=seed)
        return ImageData("mnist", train, test, 10, 1, 28, mnist_augment())
    if data_root is None:
        raise ConfigError(
            f"--dataset {dataset} needs --data-root DIR: the folder torchvision downloads {dataset} to (or already holds it)"
        )
    return _cifar(dataset, data_root, batch_size, train_limit, test_limit, seed, download)
