"""Losses in full precision: a stage may run under autocast (``convert(precision="bf16")``), its loss never does.

SupCon's normalisation, matrix of similarities and log-sum-exp, cross-entropy and the mean squared
errors of associated learning all reduce over a batch: in bfloat16 or float16 their sums lose the
digits the gradient needs. :func:`full_precision` runs a loss with autocast off and its
floating-point tensor arguments in float32 (float32 and float64 arguments are passed as they are,
so full-precision training is unchanged).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.utils._pytree as pytree

__all__ = ["full_precision", "upcast"]

F = TypeVar("F", bound=Callable[..., Any])


def upcast(value: Any) -> Any:
    """``value`` with every half-precision floating-point tensor in float32."""
    return pytree.tree_map_only(
        torch.Tensor, lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t, value
    )


def full_precision(fn: F) -> F:
    """``fn`` with autocast off (for the device of its first tensor argument) and half-precision inputs upcast."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        device = leaves[0].device.type if leaves else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            return fn(*upcast(args), **upcast(kwargs))

    return run  # type: ignore[return-value]
