"""Helpers the tests share: one intra-op thread for bit-for-bit comparisons, and the gradient-isolation check."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from decouple import METHODS
from decouple.experiments import torch_threads

#: the methods the library registers, read at import (collection), before tests or examples add their own
_LIBRARY_METHODS = dict(METHODS)


def one_thread() -> AbstractContextManager[None]:
    """One intra-op thread, so float sums run in one order and results compare bit for bit."""
    return torch_threads(1)


def assert_gradient_isolation(dm: Any, *inputs: Any, target: Any, **kw_inputs: Any) -> None:
    """Each stage's local loss has non-zero gradient on its own parameters only (inputs by position or name)."""
    stages = list(dm.stages)
    owned = [{id(p) for p in stage.parameters() if p.requires_grad} for stage in stages]
    params = [p for stage in stages for p in stage.parameters() if p.requires_grad]
    losses = dm.local_losses(*inputs, target=target, **kw_inputs)
    with_objective = [s.index for s in stages if s.objective is not None]
    assert len(losses) == len(with_objective)
    for k, loss in zip(with_objective, losses):
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        touched = {id(p) for p, g in zip(params, grads) if g is not None and bool(g.abs().sum() > 0)}
        foreign = touched - owned[k]
        assert not foreign, f"stage {k}'s loss reaches parameters of other stages"
        assert touched & owned[k], f"stage {k}'s loss reaches none of its own parameters"


def assert_inference_equals_original(model: Any, dm: Any, method: str, *inputs: Any, **kw_inputs: Any) -> None:
    """In eval mode the inference module answers as ``model`` does (``al`` replaces the model's head by
    design: it answers ``(batch, classes)``); leaves both in eval mode."""
    model.eval()
    dm.eval()
    with torch.no_grad():
        got = dm.inference_module()(*inputs, **kw_inputs)
        if method == "al":
            assert got.shape == (first_rows(inputs, kw_inputs), dm.program.num_classes)
        else:
            torch.testing.assert_close(got, model(*inputs, **kw_inputs))


def first_rows(inputs: tuple[Any, ...], kw_inputs: dict[str, Any]) -> int:
    """The batch size: the rows of the first tensor input."""
    return next(int(t.shape[0]) for t in [*inputs, *kw_inputs.values()] if isinstance(t, torch.Tensor))


#: method options that keep the local heads small on the tests' tiny models (the defaults follow the papers)
SMALL_HEADS: dict[str, dict[str, Any]] = {"scl": {"head_dims": (16, 8)}, "deinfo": {"head_dims": (16, 16)}}


def small_options(method: str) -> dict[str, Any]:
    """Options for ``method`` with small local heads (none for methods whose heads are small already)."""
    return dict(SMALL_HEADS.get(method, {}))


def registered_methods(*, decoupled: bool = False) -> list[str]:
    """Every method the library registers (``decoupled``: only those whose stages train on local losses).

    Read when the tests are collected, before any test or example registers methods of its own (an
    example's ``scl_no_detach`` lets gradients cross cuts on purpose).
    """
    return [name for name, m in _LIBRARY_METHODS.items() if not (decoupled and m.end_to_end)]
