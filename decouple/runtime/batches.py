"""Loader batches: the one set of rules every runtime uses to read inputs and the target from a batch.

Accepted: ``(x, y)`` and ``(*inputs, y)`` (tuples or lists: the target is last), or a dict of
keyword inputs holding the target under one of :data:`TARGET_KEYS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError

__all__ = ["TARGET_KEYS", "unpack_batch"]

#: keys a dict batch may hold its target under, in the order they are looked up
TARGET_KEYS = ("target", "labels", "label", "y")


def unpack_batch(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """Split a loader batch into ``(positional inputs, keyword inputs, target)``."""
    if isinstance(batch, Mapping):
        keys = [k for k in TARGET_KEYS if k in batch]
        if len(keys) != 1:
            found = "none of them" if not keys else f"several: {keys}"
            raise InputError(
                f"a dict batch must hold its target under exactly one of {list(TARGET_KEYS)}, found {found} "
                f"(keys: {sorted(map(str, batch))}); rename the target key, or map batches to (inputs..., target)"
            )
        kwargs = {str(k): v for k, v in batch.items() if k != keys[0]}
        return (), kwargs, batch[keys[0]]
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) >= 2:
        return tuple(batch[:-1]), {}, batch[-1]
    raise InputError(
        f"cannot read a batch of type {type(batch).__name__}"
        + (f" with {len(batch)} item(s)" if isinstance(batch, Sequence) else "")
        + ": training takes loader batches (x, y), (*inputs, y), or a dict of keyword inputs with a 'target' "
        "(or 'labels') key"
    )
