"""Input sizes an exported graph supports: finding the dimensions it pins and checking them on entry.

``torch.export`` with ``Dim.AUTO`` keeps a dimension static when the model's code needs its size,
and some ops (``aten.lstm``) specialise a size although export reports it dynamic. Both kinds are
found here, the second by running the graph on fake inputs of other sizes, and each input gets a
:func:`check_input_shape` node that raises a clear :class:`~decouple.errors.InputError`, in place
of the ``_guards_fn`` module the export frontend removes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from ..errors import InputError
from .inputs import InputSpec
from .meta_run import run_on_meta
from .preserve import preserved_state

__all__ = ["traced_leaves", "guard_fixed_dims", "check_input_shape"]

#: torch logs failed fake-tensor kernels at error level; probing for fixed sizes expects some
FAKE_TENSOR_LOGGER = "torch._subclasses.fake_tensor"


#: one dimension of one tensor input: (argument name, index among its tensors, dimension)
Dim = tuple[str, int, int]


def traced_leaves(graph: fx.Graph, named: dict[str, Any]) -> dict[str, list[Any]]:
    """Export's example value of every tensor input, per argument, from its flat placeholders."""
    values = iter(n.meta.get("val") for n in graph.nodes if n.op == "placeholder")
    return {name: [next(values) for _ in pytree.tree_leaves(value)] for name, value in named.items()}


def guard_fixed_dims(
    gm: fx.GraphModule,
    inputs: InputSpec,
    named: dict[str, Any],
    traced: dict[str, list[Any]],
    known: dict[Any, list[str]] | None = None,
) -> None:
    """Check on entry the input dimensions the graph only supports at their example size.

    These are the dimensions export kept static, plus those it marked dynamic but that an op
    specialised anyway (``aten.lstm`` fixes the sequence length): fake runs with dynamic sizes
    changed find them. This replaces the ``_guards_fn`` call that was removed. Arguments that
    hold several tensors are probed but not checked. ``known`` holds earlier answers by the layout
    of dynamic sizes (the other training mode's graph): a layout seen before is not probed again.
    """
    symbols: dict[str, list[Dim]] = {}
    fixed: dict[str, list[int]] = {}
    for name in inputs.names:
        for i, val in enumerate(traced[name]):
            if not isinstance(val, torch.Tensor):
                continue
            for d, size in enumerate(val.shape):
                if isinstance(size, torch.SymInt) and not is_concrete_int(size):
                    symbols.setdefault(str(size.node.expr), []).append((name, i, d))
                else:
                    fixed.setdefault(name, []).append(d)
    layout = tuple(sorted((symbol, tuple(dims)) for symbol, dims in symbols.items()))
    if known is not None and layout in known:
        specialised = known[layout]
    else:
        specialised = _specialised_symbols(gm, inputs, named, symbols)
        if known is not None:
            known[layout] = specialised
    for symbol in specialised:
        for name, _, d in symbols[symbol]:
            fixed.setdefault(name, []).append(d)
    graph = gm.graph
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    last = list(placeholders.values())[-1] if placeholders else None
    for name in inputs.names:  # in argument order
        if name in fixed and isinstance(named[name], torch.Tensor) and last is not None:
            pinned = tuple((d, int(named[name].shape[d])) for d in sorted(set(fixed[name])))
            with graph.inserting_after(last):
                last = graph.call_function(check_input_shape, (placeholders[inputs.placeholders[name]], name, pinned))


def _specialised_symbols(
    gm: fx.GraphModule, inputs: InputSpec, named: dict[str, Any], symbols: dict[str, list[Dim]]
) -> list[str]:
    """The dynamic sizes the graph fails to change: each one whose change alone fails (so that two pinned
    sizes, an image's height and width, do not pin the batch size with them), provided the others then
    change together; else every size (they are pinned together)."""
    if not symbols or _runs(gm, inputs, named, symbols, set(symbols)):
        return []
    pinned = [s for s in symbols if not _runs(gm, inputs, named, symbols, {s})]
    free = set(symbols) - set(pinned)
    if not free:
        return pinned if _runs(gm, inputs, named, symbols, set()) else []  # fails at its own sizes: no answer
    if not _runs(gm, inputs, named, symbols, free):
        return list(symbols)  # several sizes are pinned together: keep every dynamic size at its example value
    return pinned


def _runs(
    gm: fx.GraphModule, inputs: InputSpec, named: dict[str, Any], symbols: dict[str, list[Dim]], changed: set[str]
) -> bool:
    """Whether the graph runs on inputs whose sizes in ``changed`` differ from the example's.

    On the meta device first (cheap; a success there is an answer), then on fake tensors, which
    run the operators that have no meta kernel.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    resized: dict[tuple[str, int], dict[int, int]] = {}
    for symbol in changed:
        for name, i, d in symbols[symbol]:
            size = int(pytree.tree_leaves(named[name])[i].shape[d])
            resized.setdefault((name, i), {})[d] = size - 1 if size >= 3 else size + 1
    try:
        with torch.random.fork_rng(devices=[]):
            run_on_meta(gm, [_resized_like(named[name], resized, name) for name in inputs.names])
        return True
    except Exception:  # no meta kernel, data needed, or the size is pinned: fake tensors tell which
        pass
    try:
        with _quiet(FAKE_TENSOR_LOGGER), preserved_state(gm), FakeTensorMode(allow_non_fake_inputs=True) as mode:
            gm(*[_fake_like(mode, named[name], resized, name) for name in inputs.names])
    except Exception:  # any failure of the graph on those sizes: the size is pinned
        return False
    return True


def _fake_like(mode: Any, value: Any, resized: dict[tuple[str, int], dict[int, int]], name: str) -> Any:
    """``value`` with every tensor replaced by a fake one, resized where ``resized`` says."""
    return pytree.tree_map(lambda x: mode.from_tensor(x) if isinstance(x, torch.Tensor) else x,
                           _resized_like(value, resized, name))  # fmt: skip


def _resized_like(value: Any, resized: dict[tuple[str, int], dict[int, int]], name: str) -> Any:
    """``value`` with every tensor replaced by an uninitialised one, resized where ``resized`` says."""
    leaves, spec = pytree.tree_flatten(value)
    out = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            shape = list(leaf.shape)
            for d, size in resized.get((name, i), {}).items():
                shape[d] = size
            leaf = leaf.new_empty(()).expand(shape).contiguous()
        out.append(leaf)
    return pytree.tree_unflatten(out, spec)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger while probing: fake tensor failures are expected there and logged as errors."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_input_shape(value: torch.Tensor, name: str, fixed: tuple[tuple[int, int], ...]) -> None:
    """Raise :class:`InputError` unless ``value`` has size ``s`` in every dimension ``d`` of ``fixed``."""
    for dim, size in fixed:
        if value.dim() <= dim or value.shape[dim] != size:
            pinned = ", ".join(f"dim {d} = {s}" for d, s in fixed)
            raise InputError(
                f"input {name!r} has shape {tuple(value.shape)}, but the traced model fixed {pinned} "
                "(torch.export keeps a dimension static when the model's code depends on its size); "
                "give inputs of that size, or convert again with example inputs of the size you train on"
            )
