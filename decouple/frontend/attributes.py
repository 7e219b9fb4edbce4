"""Attributes by dotted path: ``attribute(root, "layer1.0.conv.weight")``, as fx ``get_attr`` targets name them."""

from __future__ import annotations

from typing import Any

import torch.fx as fx

__all__ = ["attribute", "has_attribute", "qualified_target"]


def qualified_target(node: fx.Node) -> str:
    """The dotted path a ``call_module``, ``get_attr`` or ``call_method`` node names (its target)."""
    assert isinstance(node.target, str), f"node {node.name} ({node.op}) targets {node.target!r}, not a name"
    return node.target


def attribute(root: Any, target: str) -> Any:
    """``root.a.b.c`` for ``target="a.b.c"`` (raises ``AttributeError`` when a part is missing)."""
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def has_attribute(root: Any, target: str) -> bool:
    """Whether ``attribute(root, target)`` exists."""
    try:
        attribute(root, target)
    except AttributeError:
        return False
    return True
