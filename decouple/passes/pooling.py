"""Pooling a stage's representation for its local head: the pool options and the representation's layout.

``stage_pool`` builds the module that turns a stage's representation into a vector for its local
head and, for sequences, finds the attention mask it pools with (see ``passes/masks.py``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..compiler.program import Program
from ..errors import ConfigError
from ..frontend.attributes import qualified_target
from ..objectives.pools import CHANNEL_FIRST_MODULES, BatchFirst, ConcatPool, make_pool, reads_mask
from ..tree import first_tensor
from .masks import carry_value, find_mask

__all__ = ["PoolOptions", "StagePool", "stage_pool", "split_rnn", "source_rnn", "is_channel_first"]

#: ops that keep the layout of their first input, walked through to find where a value came from
_LAYOUT_PRESERVING = {
    "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "dropout", "add", "add_", "mul", "mul_", "contiguous",
    "clone", "leaky_relu", "elu", "hardswish", "hardtanh", "iadd", "imul", "sub", "truediv",
}  # fmt: skip
_LAYOUT_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.LeakyReLU, nn.PReLU, nn.Hardswish, nn.Hardtanh,
    nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Dropout1d, nn.AlphaDropout, nn.Identity,
)  # fmt: skip
_CHANNEL_FIRST_FUNCTIONS = {
    "conv1d",
    "conv_transpose1d",
    "max_pool1d",
    "avg_pool1d",
    "adaptive_avg_pool1d",
    "batch_norm",
    "instance_norm",
}


@dataclass(frozen=True)
class PoolOptions:
    """How a stage's representation becomes the vector a local head reads.

    pool: "auto" (default: feature maps are average-pooled to a small fixed grid, sequences are
    averaged over tokens, vectors pass through), "avg", "flatten" (the papers; head size tied to
    the example input's resolution), "mean", "first"/"cls", "last", "final_state" (a recurrent
    layer's final hidden state, associated learning's LSTM heads), "none", or a module factory.
    pool_size: the grid side for "avg" (default: the largest of 4, 2, 1 that keeps at most 4096
    pooled features and fits the map).
    mask: the (N, T) attention mask sequence pools ("mean", "last", "final_state") respect:
    "auto" (the forward argument ``attention_mask`` when there is one), an argument or graph node
    name, or None.
    crossing: what the head reads where several per-sample tensors cross a cut (a multi-tensor
    split point: an encoder's output beside a decoder's state, two streams): "all" (default: each
    pooled, the vectors concatenated) or "main" (the split's own output only).
    """

    pool: str | Callable[[], nn.Module] = "auto"
    pool_size: int | None = None
    mask: str | None = "auto"
    crossing: str = "all"


@dataclass
class StagePool:
    """A stage's pool, its representation's example tensor, and the pool's keyword inputs.

    ``extras`` maps a keyword of the pool's ``forward`` (``"mask"``) to the message value that
    fills it; objectives receive them as ``StageSpec.objective_extras``.
    """

    pool: nn.Module
    example: torch.Tensor | tuple[torch.Tensor, ...]
    extras: dict[str, str]


def stage_pool(program: Program, k: int, options: PoolOptions) -> StagePool:
    """The pool for stage ``k``'s representation and, for sequences, the mask it reads.

    The mask (``options.mask``) is carried in the messages up to and including the one stage ``k``
    hands on, so objectives and inference tails after stage ``k`` find it there.
    """
    if options.pool_size is not None and (not isinstance(options.pool_size, int) or options.pool_size < 1):
        raise ConfigError(f"pool_size must be a positive int, got {options.pool_size!r}")
    crossing = _crossing(program, k, options.crossing)
    value = program.representation_value(k)
    example = first_tensor(value)
    rnn = source_rnn(program, k)
    time_major = rnn is not None and not rnn.batch_first and example.dim() == 3
    if time_major:
        example = example.transpose(0, 1)
    directions = 2 if rnn is not None and rnn.bidirectional else 1
    channel_first = is_channel_first(program, k)
    kind = options.pool
    if kind == "final_state" and rnn is None and example.dim() == 3 and not channel_first:
        # not recurrent (an embedding stage): no final state to read; the AL paper's masked mean of the embeddings
        kind = "mean"
        program.notes.append(
            f"stage {k}: pool='final_state' reads a recurrent layer's final state; stage {k}'s representation does not "
            "come from an RNN, so its head reads the masked mean over tokens"
        )
    pool = make_pool(kind, example, channel_first=channel_first, size=options.pool_size, directions=directions)
    if time_major:
        pool = BatchFirst(pool)
    if crossing:  # a multi-tensor cut: each tensor pooled on its own, the vectors concatenated
        each = options.pool if options.pool in ("auto", "avg", "flatten", "none") else "auto"
        others = [
            make_pool(each, t, channel_first=_channel_first(program, name), size=options.pool_size)
            for name, t in zip(crossing, value[1:])
        ]
        pool = ConcatPool([pool, *others])
    extras: dict[str, str] = {}
    if reads_mask(pool):
        mask = find_mask(program, k, options.mask, example)
        if mask is not None:
            carry_value(program, mask, k)
            extras["mask"] = mask
    return StagePool(pool, value if crossing else example, extras)


def split_rnn(program: Program, k: int) -> nn.RNNBase | None:
    """The recurrent module stage ``k`` ends with, when its split names one (its layout and directions)."""
    split = program.stages[k].plans[True].split
    if split is None or split.kind != "module":
        return None
    module = program.root.get_submodule(split.spec)
    return module if isinstance(module, nn.RNNBase) else None


def _crossing(program: Program, k: int, option: str) -> list[str]:
    """The other tensors stage ``k``'s head reads at a multi-tensor cut (cleared for ``crossing="main"``)."""
    if option not in ("all", "main"):
        raise ConfigError(f"crossing must be 'all' (every tensor crossing a cut) or 'main', got {option!r}")
    plans = list({id(p): p for p in program.stages[k].plans.values()}.values())
    if option == "all" and len({len(p.crossing) for p in plans}) > 1:
        program.notes.append(f"stage {k}: the train and eval graphs cross the cut with different tensors; its head "
                             "reads the split's own output only")  # fmt: skip
        option = "main"
    if option == "main":
        for plan in plans:
            plan.crossing = []
    return list(program.stages[k].plans[True].crossing)


def source_rnn(program: Program, k: int) -> nn.RNNBase | None:
    """The recurrent module stage ``k``'s representation comes from: its split names one, or it is what an RNN
    returned, its output sequence (``[0]``) or that passed through layout-preserving ops (dropout, activations)."""
    rnn = split_rnn(program, k)
    if rnn is not None:
        return rnn
    plan = program.stages[k].plans[True]
    assert plan.representation is not None, "only stages before the last have a representation to pool"
    for node in _walk_back(program, plan.representation):
        if node.op == "call_module":
            module = program.root.get_submodule(qualified_target(node))
            if isinstance(module, nn.RNNBase):
                return module
            if not isinstance(module, _LAYOUT_PRESERVING_MODULES):
                return None
        elif node.op == "call_function" and node.target is operator.getitem:
            if node.args[1] != 0:
                return None
        elif node.op not in ("call_function", "call_method") or _name(node.target) not in _LAYOUT_PRESERVING:
            return None
    return None


def is_channel_first(program: Program, k: int) -> bool:
    """Whether stage ``k``'s 3-D representation is ``(N, C, L)`` (from a Conv1d-like op)."""
    plan = program.stages[k].plans[True]
    assert plan.representation is not None, "only stages before the last have a representation to pool"
    return _channel_first(program, plan.representation)


def _channel_first(program: Program, name: str) -> bool:
    """Whether the 3-D value of node ``name`` is ``(N, C, L)``: walks back through layout-preserving ops."""
    for node in _walk_back(program, name):  # through activations, residual adds
        if node.op == "call_module":
            module = program.root.get_submodule(qualified_target(node))
            if isinstance(module, CHANNEL_FIRST_MODULES):
                return True
            if not isinstance(module, _LAYOUT_PRESERVING_MODULES):
                return False
        elif node.op in ("call_function", "call_method"):
            target = _name(node.target)
            if target in _CHANNEL_FIRST_FUNCTIONS:
                return True
            if target not in _LAYOUT_PRESERVING:
                return False
        else:
            return False
    return False


def _walk_back(program: Program, name: str, steps: int = 16) -> Iterator[fx.Node]:
    """Node ``name`` of the train graph, then the node each came from (its first input), ``steps`` at most.

    The callers stop at the first node that is not layout-preserving (dropout, activations, adds).
    """
    node = program.node(True, name)
    for _ in range(steps):
        yield node
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        if not inputs:
            return
        node = inputs[0]


def _name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):  # torch.export graphs: aten.conv1d.default -> "conv1d"
        return target._schema.name.split("::")[-1].lower()
    name = getattr(target, "__name__", None) or str(target)
    name = name.split(".")[-1] if "." in name and not name.startswith("aten") else name
    if name.startswith("aten."):
        name = name.split(".")[1]
    return name.lower()
