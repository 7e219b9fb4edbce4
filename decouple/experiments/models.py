"""Reference models of the papers' experiments, sized for small images, with their split points.

The papers compare methods on a vanilla ConvNet, a VGG network and ResNet-18; these builders
keep the shapes of those networks but take a ``width`` (channels of the first block) so the same
code runs in minutes on a CPU (small width, MNIST) and at paper scale on a GPU (width 64,
CIFAR). Every model names its blocks (``block1``, ``layer2``, ...) so the splits are readable,
and ends in ``classifier`` (the part associated learning replaces).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import METHODS
from ..errors import ConfigError, close_matches

__all__ = [
    "Architecture",
    "ARCHITECTURES",
    "DemoCNN",
    "ConvNet",
    "VGG",
    "ResNet18",
    "build_model",
    "get_architecture",
    "replaces_head",
]


def conv_block(cin: int, cout: int, *, pool: bool) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU, then a 2x2 max-pool when ``pool``."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class DemoCNN(nn.Module):
    """The demo's small CNN: two conv blocks and a linear classifier on the flattened maps."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: int = 32) -> None:
        super().__init__()
        self.block1 = conv_block(in_channels, width, pool=True)
        self.block2 = conv_block(width, 2 * width, pool=True)
        side = image_size // 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block2(self.block1(x)))


class ConvNet(nn.Module):
    """The papers' vanilla ConvNet: three conv layers, then a linear classifier on the flattened maps."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 32) -> None:
        super().__init__()
        self.block1 = conv_block(in_channels, width, pool=True)  # (N, w, S/2, S/2)
        self.block2 = conv_block(width, 2 * width, pool=True)  # (N, 2w, S/4, S/4)
        self.block3 = conv_block(2 * width, 4 * width, pool=False)  # (N, 4w, S/4, S/4)
        side = image_size // 4
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block3(self.block2(self.block1(x))))


class VGG(nn.Module):
    """A VGG-11-style network: blocks of 1, 1, 2, 2 conv layers (widths w, 2w, 4w, 8w), each max-pooled."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 64) -> None:
        super().__init__()
        w = width
        self.block1 = conv_block(in_channels, w, pool=True)
        self.block2 = conv_block(w, 2 * w, pool=True)
        self.block3 = nn.Sequential(conv_block(2 * w, 4 * w, pool=False), conv_block(4 * w, 4 * w, pool=True))
        self.block4 = nn.Sequential(conv_block(4 * w, 8 * w, pool=False), conv_block(8 * w, 8 * w, pool=True))
        side = image_size // 16
        if side < 1:
            raise ConfigError(f"VGG pools four times, so images must be at least 16 pixels wide; got {image_size}")
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * w * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block4(self.block3(self.block2(self.block1(x)))))


class BasicBlock(nn.Module):
    """The residual block of ResNet-18: two 3x3 convolutions and a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images (CIFAR-style): a 3x3 stride-1 stem and no max-pool, widths w..8w."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 64) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(w, w, 1), BasicBlock(w, w, 1))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w, 1))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w, 1))
        self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w, 1))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.classifier(self.layer4(self.layer3(x)))


def replaces_head(method: str) -> bool:
    """Whether the registered ``method`` replaces the model's head (its stages are every block before it)."""
    found = METHODS.get(method)
    return found is not None and found.replaces_head


@dataclass(frozen=True)
class Architecture:
    """A model family: its builder, the split points in forward order, and its width at paper scale.

    ``blocks`` are every block before ``classifier``; associated learning cuts after all of them,
    so the part it replaces by its decoders is the classifier alone and it trains every block.
    """

    name: str
    title: str
    builder: Callable[..., nn.Module]
    splits: tuple[str, ...]
    blocks: tuple[str, ...]
    small_width: int
    paper_width: int

    def build(self, in_channels: int, num_classes: int, image_size: int, width: int | None = None) -> nn.Module:
        """The model for ``(N, in_channels, image_size, image_size)`` images (``width`` defaults to the small one)."""
        return self.builder(in_channels, num_classes, image_size, width or self.small_width)

    def splits_for(self, stages: int | None = None, method: str = "scl") -> list[str]:
        """The split points for ``stages`` stages (default: every split point, one stage per block).

        For a method that replaces the model's head (``al``) the points are :attr:`blocks` (its
        stages are the encoders; the classifier after the last point is replaced).
        """
        replaced = replaces_head(method)
        points = self.blocks if replaced else self.splits
        most = len(points) + (0 if replaced else 1)
        if stages is None:
            return list(points)
        if isinstance(stages, bool) or not isinstance(stages, int) or not 2 <= stages <= most:
            raise ConfigError(f"{self.title} splits into 2 to {most} stages for method {method!r}, got {stages!r}")
        return list(points[: stages if replaced else stages - 1])


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("demo", "demo CNN", DemoCNN, ("block1",), ("block1", "block2"), 32, 64),
        Architecture(
            "convnet",
            "Vanilla ConvNet",
            ConvNet,
            ("block1", "block2", "block3"),
            ("block1", "block2", "block3"),
            16,
            128,
        ),
        Architecture(
            "vgg", "VGG", VGG, ("block1", "block2", "block3"), ("block1", "block2", "block3", "block4"), 16, 64
        ),
        Architecture(
            "resnet18",
            "ResNet-18",
            ResNet18,
            ("layer1", "layer2", "layer3"),
            ("layer1", "layer2", "layer3", "layer4"),
            8,
            64,
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {name!r}{close_matches(name, ARCHITECTURES)}; choose from {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[name]


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, width: int | None = None) -> nn.Module:
    """``get_architecture(name).build(...)``."""
    return get_architecture(name).build(in_channels, num_classes, image_size, width)
