"""Model factories for the command-line and export tests, named by specs like ``tests.cli_models:tiny_net``."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx
from torch import nn


def scale_shift(x: torch.Tensor, scale: float) -> torch.Tensor:
    """A free function torch.fx keeps as one call (wrapped below): an export must carry its source."""
    return x * scale + math.sqrt(0.25)


torch.fx.wrap("scale_shift")


class Block(nn.Module):
    """A residual block that does not keep its constructor argument (no ``self.channels``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.norm(self.conv(x)))


class TinyNet(nn.Module):
    """Stem, three residual blocks, a wrapped free function, pooled linear head."""

    def __init__(self, num_classes: int = 5, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(Block(channels), Block(channels), Block(channels))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = scale_shift(self.blocks(self.stem(x)), 0.5)
        return self.head(torch.flatten(self.pool(h), 1))


def tiny_net(num_classes: int = 5, channels: int = 8) -> nn.Module:
    return TinyNet(num_classes, channels)


class TokenNet(nn.Module):
    """Token ids -> embedding -> two MLP blocks -> mean over tokens -> classes."""

    def __init__(self, vocab_size: int = 50, num_classes: int = 3, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.mix = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.deep = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.out = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.deep(self.mix(self.embed(ids))).mean(dim=1))


def token_net(vocab_size: int = 50, num_classes: int = 3) -> nn.Module:
    return TokenNet(vocab_size, num_classes)


class TiedPair(nn.Module):
    """Two layers sharing one weight inside the same stage (allowed: no tie crosses a cut)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 8)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.b(torch.relu(self.a(torch.relu(self.first(x))))))


def not_a_model() -> int:
    return 3


def numpy_norm(x: torch.Tensor) -> torch.Tensor:
    """Uses numpy in forward: an export must refuse it (exported code imports only torch)."""
    return x / float(np.sqrt(x.shape[-1]))


torch.fx.wrap("numpy_norm")


class NumpyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(numpy_norm(self.a(x)))
