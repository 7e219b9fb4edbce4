"""Attributes by dotted path: ``attribute(root, "layer1.0.conv.weight")``, as fx ``get_attr`` targets name them."""

from __future__ import annotations

from typing import Any

__all__ = ["attribute", "has_attribute"]


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
