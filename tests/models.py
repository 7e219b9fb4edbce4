"""Small models the tests convert: MLPs, residual CNNs with long skips, awkward cases."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``layers.0 .. layers.{n-1}`` (Linear + ReLU blocks) then ``head``."""

    def __init__(self, widths: list[int], num_classes: int = 4) -> None:
        super().__init__()
        blocks = []
        for a, b in itertools.pairwise(widths):
            blocks.append(nn.Sequential(nn.Linear(a, b), nn.ReLU()))
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class ResCNN(nn.Module):
    """Stem, residual blocks, and a long skip from the stem to the end that crosses every cut."""

    def __init__(self, channels: int = 8, blocks: int = 3, num_classes: int = 5, long_skip: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.long_skip = long_skip
        self.proj = nn.Conv2d(channels, channels, 1) if long_skip else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        h = self.blocks(s)
        if self.long_skip:
            h = h + self.proj(s)
        return self.fc(torch.flatten(self.pool(h), 1))


class InplaceAfterCut(nn.Module):
    """The value leaving ``a`` is modified in place right after the cut."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(self.act(h))


class FunctionalDropout(nn.Module):
    """Functional dropout reads ``self.training``: fx freezes it at trace time."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(10, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(torch.relu(self.a(x)), 0.5, self.training)
        h = F.dropout(torch.relu(self.b(h)), 0.5, self.training)
        return self.c(h)


class Reused(nn.Module):
    """One module called twice: splitting at it is ambiguous."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(torch.relu(self.shared(self.inp(x)))))


class Tied(nn.Module):
    """An embedding and an output layer sharing one weight (GPT-2 style)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 8)
        self.lm = nn.Linear(8, 10, bias=False)
        self.lm.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(torch.relu(self.mid(self.embed(ids).mean(1))))


class ParamOnlyValue(nn.Module):
    """A tensor computed from a parameter alone early on, then read in two places."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale * 2.0
        h = self.a(x) * s
        h = self.b(h) * s
        return self.c(h)


class ParamOnlyMoved(nn.Module):
    """A tensor computed from a parameter early, read only after the cut: it moves with its reader."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale.exp()
        h = torch.relu(self.a(x))
        return self.b(h * s)


class SideBranch(nn.Module):
    """``side`` runs but its output is never used."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(4, 8)
        self.side = nn.Linear(4, 8)
        self.g = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.f(x)
        self.side(x)
        return self.g(h)


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


class TupleBlock(nn.Module):
    """Returns ``(features, aux)``; the local head must read the first tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.aux = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.lin(x)), self.aux(x)


class UsesTuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = TupleBlock()
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, aux = self.block(x)
        h = torch.relu(self.mid(h))
        return self.out(torch.cat([h, aux], dim=1))


class ShapeCarrier(nn.Module):
    """Reads ``x.size(0)`` before the cut and uses it after: an int crosses the cut."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        h = torch.relu(self.a(x))
        return self.b(h.reshape(n, -1))


class TwoStream(nn.Module):
    """Two branches over the same input that meet only at the head (CrossViT-style): no single tensor
    crosses a cut inside them, so every split point inside has both streams crossing."""

    def __init__(self, width: int = 8, depth: int = 3, num_classes: int = 3) -> None:
        super().__init__()
        self.a = nn.ModuleList(nn.Sequential(nn.Linear(width if i else 6, width), nn.ReLU()) for i in range(depth))
        self.b = nn.ModuleList(nn.Sequential(nn.Linear(width if i else 6, width), nn.Tanh()) for i in range(depth))
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x, x
        for block_a, block_b in zip(self.a, self.b):
            a, b = block_a(a), block_b(b)
        return self.head(torch.cat([a, b], dim=1))


class ClassAttention(nn.Module):
    """The class token attends to itself and the patch tokens; the patches pass on unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Linear(dim, dim)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([cls, patches], dim=1)
        cls = cls + self.attn(cls, tokens, tokens)[0]
        return cls + torch.relu(self.mlp(cls))


class ClassToken(nn.Module):
    """Patch tokens, then class-attention blocks where the class token travels beside them (CaiT-style)."""

    def __init__(self, dim: int = 8, blocks: int = 3, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(ClassAttention(dim) for _ in range(blocks))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(x)  # (N, T, dim)
        cls = self.cls.expand(x.shape[0], -1, -1)
        for block in self.blocks:
            cls = block(cls, patches)
        return self.head(cls[:, 0])
