"""Nested values (tuples, lists, dicts of tensors and plain data): the tensors inside them, and maps over them.

Messages between stages, model outputs and carried targets are pytrees; every runtime and pass
reads and transforms them with these few functions, so "detach every tensor" means one thing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree

__all__ = ["tensor_leaves", "first_tensor", "map_tensors", "detach_tree", "clone_tree", "move_tree"]


def tensor_leaves(value: Any) -> list[torch.Tensor]:
    """The tensors inside a (possibly nested) value, in pytree order."""
    return [x for x in pytree.tree_leaves(value) if isinstance(x, torch.Tensor)]


def first_tensor(value: Any) -> torch.Tensor:
    """The first tensor of a (possibly nested) value, e.g. a module's output."""
    if isinstance(value, torch.Tensor):
        return value
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            return leaf
    raise TypeError(f"expected a tensor or a structure holding one, got {type(value).__name__}")


def map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``value`` with every tensor ``t`` replaced by ``fn(t)``; other leaves unchanged."""
    return pytree.tree_map(lambda x: fn(x) if isinstance(x, torch.Tensor) else x, value)


def detach_tree(value: Any) -> Any:
    """Detach every tensor inside a (possibly nested) value."""
    return map_tensors(torch.Tensor.detach, value)


def clone_tree(value: Any) -> Any:
    """Detach and clone every tensor inside a (possibly nested) value."""
    return map_tensors(lambda x: x.detach().clone(), value)


def move_tree(value: Any, device: torch.device, *, non_blocking: bool = False) -> Any:
    """Move every tensor in ``value`` to ``device`` (a no-op for tensors already there)."""
    return map_tensors(lambda x: x.to(device, non_blocking=non_blocking) if x.device != device else x, value)
