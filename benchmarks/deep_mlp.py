"""The deep MLP and data the runtime benchmarks share: equal blocks, so a split into stages balances exactly.

Import it from a benchmark run as a script (``python benchmarks/<name>.py``), whose directory is
on ``sys.path``: ``from deep_mlp import DeepMLP, convert_deep_mlp, mnist_batches``.
"""

from __future__ import annotations

import torch
from torch import nn

import decouple
from decouple.experiments.datasets import MNIST_MEAN, MNIST_STD, load_mnist

__all__ = ["DeepMLP", "convert_deep_mlp", "mnist_batches", "BATCH_SIZE"]

BATCH_SIZE = 256


class DeepMLP(nn.Module):
    """``stem`` (784 -> width), ``depth`` Linear-ReLU blocks of ``width``, then ``head``."""

    def __init__(self, width: int = 1024, depth: int = 8, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU())
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def convert_deep_mlp(
    num_stages: int = 2, *, width: int = 1024, depth: int = 8, method: str = "scl", seed: int = 0
) -> decouple.DecoupledModel:
    """The MLP cut after every ``depth / num_stages`` blocks (the stem goes with the first stage)."""
    if depth % num_stages:
        raise ValueError(f"depth {depth} does not split into {num_stages} equal stages")
    per = depth // num_stages
    splits = [f"blocks.{per * k - 1}" for k in range(1, num_stages)]
    torch.manual_seed(seed)
    return decouple.convert(
        DeepMLP(width, depth), method=method, splits=splits, example_inputs=(torch.randn(2, 1, 28, 28),)
    )


def mnist_batches(count: int, batch_size: int = BATCH_SIZE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of the bundled MNIST training images in file order, cycling if needed."""
    x, y = load_mnist("train")
    x = (x - MNIST_MEAN) / MNIST_STD
    picks = [torch.arange(i * batch_size, (i + 1) * batch_size) % len(y) for i in range(count)]
    return [(x[p], y[p]) for p in picks]
