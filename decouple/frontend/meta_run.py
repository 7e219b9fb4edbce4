"""Running a graph module on the meta device: shapes and dtypes of every value, no compute, nothing touched.

Every tensor the graph reads from its module (parameters, buffers, tensor constants) is swapped for a
meta copy for the duration of the call, and tensor inputs are given as meta tensors; the module's own
tensors are never read or written. Operators without a meta kernel, and code that needs data
(``.item()``, a data-dependent size), raise: callers fall back to fake tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from .attributes import attribute

__all__ = ["run_on_meta", "to_meta"]


def to_meta(value: Any) -> Any:
    """``value`` with every tensor replaced by an empty meta tensor of the same shape, strides and dtype."""

    def convert(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            meta = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
            return meta.requires_grad_(x.requires_grad) if x.is_floating_point() or x.is_complex() else meta
        return x

    return pytree.tree_map(convert, value)


def run_on_meta(gm: fx.GraphModule, inputs: Sequence[Any], run: Callable[..., Any] | None = None) -> Any:
    """``run(*inputs)`` (default: ``gm(*inputs)``) with ``gm``'s tensors and the inputs on the meta device."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        state[name] = tensor
    for node in gm.graph.nodes:
        if node.op == "get_attr" and isinstance(node.target, str) and node.target not in state:
            value = attribute(gm, node.target)
            if isinstance(value, torch.Tensor):
                state[node.target] = value
    call = run or gm
    with _swapped(gm, {name: to_meta(t) for name, t in state.items()}):
        return call(*to_meta(list(inputs)))


@contextlib.contextmanager
def _swapped(root: nn.Module, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Set each dotted attribute of ``root`` to its new value (parameters as parameters), then put them back."""
    saved: list[tuple[nn.Module, str, Any]] = []
    try:
        for name, value in values.items():
            prefix, _, attr = name.rpartition(".")
            owner = root.get_submodule(prefix) if prefix else root
            old = getattr(owner, attr)
            new = nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
            saved.append((owner, attr, old))
            setattr(owner, attr, new)  # through nn.Module.__setattr__: nn.LSTM refreshes its flat weights
        yield
    finally:
        for owner, attr, old in reversed(saved):
            setattr(owner, attr, old)
