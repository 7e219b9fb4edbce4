"""The auxiliary networks of Decoupled Greedy Learning (Belilovsky, Eickenberg & Oyallon, ICML 2020).

DGL trains every stage ``j`` with its own auxiliary problem: a small network ``a_j`` on the
stage's output, minimising the cross-entropy ``CE(a_j(h_j), y)`` over the stage's and the
network's parameters only (the greedy objective; ``h_j`` is detached from the stage before). The
objective is :class:`~decouple.objectives.early_exit.ExitObjective`, as for ``early_exit``: DGL
differs from early exit by the auxiliary network's depth, a few layers instead of one linear map.

The variants follow the authors' released code (``auxiliary_nets_study/models.py``), read for
this module; on a ``(N, C, H, W)`` map:

- ``"cnn"`` (the default): two ``Conv3x3(C, C) - BatchNorm - ReLU`` at full resolution, spatial
  averaging to a 2x2 grid, BatchNorm, then ``Linear(4C, classes)``. The issue that asked for DGL
  described an MLP after the averaging; the released ``cnn`` network ends in this one linear
  layer, which is what is built here.
- ``"mlp"``: averaging to ``ceil(H/4) x ceil(W/4)``, then to 2x2, then a 3-layer MLP
  (``Linear(4C, 4C) - BatchNorm1d - ReLU`` three times) and ``Linear(4C, classes)``.
- ``"mlp-sr"``: averaging to ``ceil(H/4) x ceil(W/4)``, three ``Conv1x1(C, C) - BatchNorm - ReLU``
  ("staged spatial resolution"), averaging to 2x2, and the same MLP.

A representation that is not a feature map (vectors, sequences, 1-D signals) has no spatial
structure to convolve: every variant is then the 3-layer MLP on the pooled vector (the stage's
pool, width ``d``), and the method notes it.
"""

from __future__ import annotations

import math

from torch import nn

from ..errors import ConfigError
from .heads import PooledHead
from .pools import FirstTensor

__all__ = ["AUX_VARIANTS", "aux_network", "mlp_layers"]

AUX_VARIANTS = ("cnn", "mlp", "mlp-sr")


def _conv_bn_relu(channels: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
    ]


def mlp_layers(width: int, classes: int, depth: int = 3) -> list[nn.Module]:
    """``depth`` times ``Linear(width, width) - BatchNorm1d - ReLU``, then ``Linear(width, classes)``."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU()]
    return [*layers, nn.Linear(width, classes)]


def aux_network(
    variant: str, map_shape: tuple[int, ...] | None, pool: nn.Module, pooled_dim: int, classes: int
) -> PooledHead:
    """DGL's auxiliary network for a stage: ``representation -> (N, classes)`` logits.

    ``map_shape`` is ``(C, H, W)`` for a feature map (the ``variant`` network reads the map), or
    ``None`` (the MLP reads ``pool(representation)``, ``pooled_dim`` wide).
    """
    if variant not in AUX_VARIANTS:
        raise ConfigError(f"aux must be one of {', '.join(AUX_VARIANTS)} (DGL's auxiliary networks), got {variant!r}")
    if map_shape is None:
        return PooledHead(pool, nn.Sequential(*mlp_layers(pooled_dim, classes)))
    channels, height, width = map_shape
    reduced = nn.AdaptiveAvgPool2d((math.ceil(height / 4), math.ceil(width / 4)))
    if variant == "cnn":
        layers = [*_conv_bn_relu(channels, 3), *_conv_bn_relu(channels, 3), nn.AdaptiveAvgPool2d(2),
                  nn.BatchNorm2d(channels), nn.Flatten(), nn.Linear(4 * channels, classes)]  # fmt: skip
    elif variant == "mlp":
        layers = [reduced, nn.AdaptiveAvgPool2d(2), nn.Flatten(), *mlp_layers(4 * channels, classes)]
    else:
        staged = [m for _ in range(3) for m in _conv_bn_relu(channels, 1)]
        layers = [reduced, *staged, nn.AdaptiveAvgPool2d(2), nn.Flatten(), *mlp_layers(4 * channels, classes)]
    return PooledHead(FirstTensor(), nn.Sequential(*layers))
