"""What several passes share: pooling options, representation layout, the number of classes."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError
from ..heads import CHANNEL_FIRST_MODULES, first_tensor, make_pool
from ..ir import Program
from ..losses import logits_of

__all__ = ["PoolOptions", "build_pool", "is_channel_first", "infer_num_classes"]

#: ops that keep the layout of their first input, walked through to find where a value came from
_LAYOUT_PRESERVING = {
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "dropout", "add", "add_", "mul", "mul_", "contiguous",
    "clone", "leaky_relu", "elu", "hardswish", "hardtanh", "iadd", "imul", "sub", "truediv",
}  # fmt: skip
_LAYOUT_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.LeakyReLU, nn.PReLU, nn.Hardswish, nn.Hardtanh,
    nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Dropout1d, nn.AlphaDropout, nn.Identity,
)  # fmt: skip
_CHANNEL_FIRST_FUNCTIONS = {"conv1d", "conv_transpose1d", "max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "batch_norm", "instance_norm"}


@dataclass(frozen=True)
class PoolOptions:
    """How a stage's representation becomes the vector a local head reads.

    pool: "auto" (default: feature maps are average-pooled to a small fixed grid, sequences are
    averaged over tokens, vectors pass through), "avg", "flatten" (the papers; head size tied to
    the example input's resolution), "mean", "first"/"cls", "last", "none", or a module factory.
    pool_size: the grid side for "avg" (default: the largest of 4, 2, 1 that keeps at most 4096
    pooled features and fits the map).
    """

    pool: str | Callable[[], nn.Module] = "auto"
    pool_size: int | None = None


def build_pool(program: Program, k: int, options: PoolOptions) -> tuple[nn.Module, torch.Tensor]:
    """The pool for stage ``k``'s representation, and that representation's example tensor."""
    example = first_tensor(program.representation_value(k))
    if options.pool_size is not None and (not isinstance(options.pool_size, int) or options.pool_size < 1):
        raise ConfigError(f"pool_size must be a positive int, got {options.pool_size!r}")
    pool = make_pool(options.pool, example, channel_first=is_channel_first(program, k), size=options.pool_size)
    return pool, example


def is_channel_first(program: Program, k: int) -> bool:
    """Whether stage ``k``'s 3-D representation is ``(N, C, L)`` (from a Conv1d-like op)."""
    plan = program.stages[k].plans[True]
    node = program.node(True, plan.representation)
    for _ in range(16):  # walk back through layout-preserving ops (activations, residual adds)
        if node.op == "call_module":
            module = program.root.get_submodule(node.target)
            if isinstance(module, CHANNEL_FIRST_MODULES):
                return True
            if not isinstance(module, _LAYOUT_PRESERVING_MODULES):
                return False
        elif node.op in ("call_function", "call_method"):
            name = _name(node.target)
            if name in _CHANNEL_FIRST_FUNCTIONS:
                return True
            if name not in _LAYOUT_PRESERVING:
                return False
        else:
            return False
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        if not inputs:
            return False
        node = inputs[0]
    return False


def _name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target)
    name = name.split(".")[-1] if "." in name and not name.startswith("aten") else name
    if name.startswith("aten."):
        name = name.split(".")[1]
    return name.lower()


def infer_num_classes(program: Program, method: str) -> int:
    """The number of classes: the ``num_classes`` option, else the width of a ``(N, C)`` output."""
    if program.num_classes is not None:
        if not isinstance(program.num_classes, int) or program.num_classes < 2:
            raise ConfigError(f"num_classes must be an int >= 2, got {program.num_classes!r}")
        return program.num_classes
    output = program.output_value()
    out = logits_of(output)
    if out is not None and out.dim() == 2 and out.shape[1] >= 2:
        program.num_classes = int(out.shape[1])
        return program.num_classes
    shape = tuple(out.shape) if out is not None else type(output).__name__
    raise ConfigError(
        f"method {method!r} needs the number of classes, and it cannot be read from the model's output "
        f"({shape}, expected a (batch, classes) logits tensor); pass num_classes=C to convert()"
    )
