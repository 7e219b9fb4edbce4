"""Heads: the small networks a local objective trains on a pooled representation (projectors, MLPs, bridges, exits)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["make_projector", "PooledHead", "ACTIVATIONS", "make_activation", "make_mlp"]


def make_projector(
    kind: str | Callable[[int], nn.Module],
    in_dim: int,
    dims: Sequence[int] = (512, 1024),
    *,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> nn.Module:
    """A projection head from ``in_dim``: "mlp" (Linear-ReLU-...-Linear over ``dims``), "linear", "identity"."""
    if callable(kind) and not isinstance(kind, str):
        module = kind(in_dim)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"head factory returned {type(module).__name__}, expected an nn.Module")
        return module
    dims = tuple(int(d) for d in dims)
    if kind == "identity":
        return nn.Identity()
    if not dims or any(d <= 0 for d in dims):
        raise ConfigError(f"head_dims must be positive sizes, got {dims!r}")
    if kind == "linear":
        return nn.Linear(in_dim, dims[-1])
    if kind == "mlp":
        layers: list[nn.Module] = []
        prev = in_dim
        for i, d in enumerate(dims):
            layers.append(nn.Linear(prev, d))
            if i < len(dims) - 1:
                layers.append(activation())
            prev = d
        return nn.Sequential(*layers)
    raise ConfigError(f"unknown head {kind!r}; choose 'mlp', 'linear', 'identity', or pass a callable dim -> nn.Module")


class PooledHead(nn.Module):
    """``net(pool(representation))``: a head that reads a stage's representation (bridges, exits).

    Keyword extras (e.g. an attention mask) go to the pool.
    """

    def __init__(self, pool: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.net = net

    def forward(self, representation: Any, **extras: Any) -> torch.Tensor:
        pooled = self.pool(representation, **extras) if extras else self.pool(representation)
        return self.net(pooled)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def make_activation(name: str | None) -> nn.Module:
    """An activation module by name ("tanh", "sigmoid", "relu", "elu", "gelu", "identity"/None)."""
    if name is None:
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def make_mlp(
    in_dim: int,
    out_dim: int,
    *,
    hidden: int | None = None,
    activation: str | None = None,
    hidden_activation: str = "relu",
) -> nn.Sequential:
    """``Linear(in, out)`` (or ``Linear(in, hidden) - act - Linear(hidden, out)``), then ``activation``."""
    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(in_dim, hidden), make_activation(hidden_activation), nn.Linear(hidden, out_dim)]
    else:
        layers.append(nn.Linear(in_dim, out_dim))
    if activation not in (None, "identity"):
        layers.append(make_activation(activation))
    return nn.Sequential(*layers)
