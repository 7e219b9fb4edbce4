"""Leaving a model as it was: its training mode, buffers (running statistics, counters) and the RNG.

Tracing, shape propagation, probing pinned sizes and measuring stage costs all run the model for
analysis only; these context managers put back whatever such a run changed.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["training_mode", "save_buffers", "restore_buffers", "preserved_state", "copy_module"]

M = TypeVar("M", bound=nn.Module)

#: values ``copy.deepcopy`` returns as they are
_ATOMIC = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.layout)


@contextlib.contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Run the block with ``model.train(training)``, then restore every submodule's own mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def save_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every buffer of ``model``, by qualified name."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> list[str]:
    """Put back buffer values from :func:`save_buffers`; returns the names of those that had changed.

    A buffer whose shape changed is reported but not restored (it cannot be copied into).
    """
    changed = []
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name not in saved:
                continue
            before = saved[name]
            if b.shape != before.shape:
                changed.append(name)
            elif not torch.equal(b, before.to(b.device)):
                changed.append(name)
                b.copy_(before)
    return changed


@contextlib.contextmanager
def preserved_state(model: nn.Module, *, grads: bool = False) -> Iterator[None]:
    """Restore ``model``'s buffers and the CPU (and CUDA) RNG after the block; with ``grads``, its gradients too."""
    saved = save_buffers(model)
    saved_grads = {id(p): p.grad for p in model.parameters()} if grads else {}
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            restore_buffers(model, saved)
            if grads:
                for p in model.parameters():
                    p.grad = saved_grads.get(id(p))


def copy_module(model: M) -> M:
    """``copy.deepcopy(model)``, about twice as fast on plain module trees.

    ``deepcopy`` walks every module's ``__dict__`` through its generic dispatch: a ResNet-50 spends
    more time there than in copying its weights. Here a module whose class keeps ``nn.Module``'s
    pickling (no ``__deepcopy__``, ``__reduce__``, ``__getstate__`` or ``__setstate__`` of its own, no
    ``__slots__``) is rebuilt directly: children recursively, parameters and buffers through
    ``deepcopy`` (which clones them), empty hook tables as new empty tables, immutable attributes
    as they are, anything else through ``deepcopy`` with the shared memo. Other classes take
    ``deepcopy`` itself, so the result is what ``deepcopy`` gives, shared references included.
    """
    return _copy(model, {})


def _copy(module: nn.Module, memo: dict[int, Any]) -> Any:
    if id(module) in memo:
        return memo[id(module)]
    cls: type[nn.Module] = type(module)
    if not _plain(cls):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state: dict[str, Any] = {}
    for key, value in module.__dict__.items():
        kind = type(value)
        if key == "_compiled_call_impl":
            continue  # nn.Module.__getstate__ drops it
        if key == "_modules":
            state[key] = kind((name, None if child is None else _copy(child, memo)) for name, child in value.items())
        elif kind in _ATOMIC:
            state[key] = value
        elif kind in (dict, OrderedDict, set) and not value:
            state[key] = kind()
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__dict__.update(state)
    return new


_PLAIN_CLASSES: dict[type, bool] = {}


def _plain(cls: type) -> bool:
    """Whether ``deepcopy`` copies instances of ``cls`` as it copies an ``nn.Module`` (see :func:`copy_module`)."""
    plain = _PLAIN_CLASSES.get(cls)
    if plain is None:
        plain = _PLAIN_CLASSES[cls] = (
            issubclass(cls, nn.Module)
            and getattr(cls, "__deepcopy__", None) is None
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and cls.__getstate__ is nn.Module.__getstate__
            and cls.__setstate__ is nn.Module.__setstate__
            and not any("__slots__" in vars(k) for k in cls.__mro__ if k is not object)
        )
    return plain
