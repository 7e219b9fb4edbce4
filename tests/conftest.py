"""Shared fixtures and property checks for the test suite."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from decouple.experiment import torch_threads

sys.path.insert(0, os.path.dirname(__file__))

torch.set_num_threads(min(2, torch.get_num_threads()))


def one_thread():
    """One intra-op thread, so float sums run in one order and results compare bit for bit."""
    return torch_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def assert_gradient_isolation(dm, *inputs, target, **kw_inputs) -> None:
    """Each stage's local loss has non-zero gradient on its own parameters only (inputs by position or name)."""
    stages = list(dm.stages)
    owned = [
        {id(p) for p in stage.parameters() if p.requires_grad}
        for stage in stages
    ]
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
