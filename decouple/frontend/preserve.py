"""Leaving a model as it was: its training mode, buffers (running statistics, counters) and the RNG.

Tracing, shape propagation, probing pinned sizes and measuring stage costs all run the model for
analysis only; these context managers put back whatever such a run changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["training_mode", "save_buffers", "restore_buffers", "preserved_state"]


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
