"""Training state: exact resume from a checkpoint, mode switching, optimizers per stage."""

from __future__ import annotations

import io

import pytest
import torch

import decouple

from .helpers import one_thread, registered_methods, small_options
from .models import ResCNN


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(n)]


def _convert(seed: int = 0) -> decouple.DecoupledModel:
    torch.manual_seed(seed)
    return decouple.convert(
        ResCNN(channels=4, blocks=2, num_classes=3),
        splits=["blocks.0", "blocks.1"],
        example_inputs=(torch.randn(2, 3, 8, 8),),
    )


def _params(dm: decouple.DecoupledModel) -> list[torch.Tensor]:
    return [p.detach().clone() for p in dm.parameters()] + [b.clone() for b in dm.buffers()]


def test_resume_is_bit_identical() -> None:
    data = _batches(6)
    straight = _convert()
    for x, y in data:
        straight.train_step(x, target=y)

    first = _convert()
    for x, y in data[:3]:
        first.train_step(x, target=y)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = _convert(seed=123)  # other random heads: the checkpoint must overwrite everything
    resumed.load_state_dict(state)
    assert resumed.steps == 3
    for x, y in data[3:]:
        resumed.train_step(x, target=y)
    for a, b in zip(_params(straight), _params(resumed)):
        assert torch.equal(a, b)


def test_checkpoint_from_another_conversion_is_rejected() -> None:
    dm = _convert()
    other = decouple.convert(
        ResCNN(channels=4, blocks=2, num_classes=3), splits=["blocks.0"], example_inputs=(torch.randn(2, 3, 8, 8),)
    )
    with pytest.raises(decouple.DecoupleError, match="different conversion"):
        other.load_state_dict(dm.state_dict())


def test_each_stage_owns_its_optimizer() -> None:
    dm = decouple.convert(
        ResCNN(channels=4, blocks=2, num_classes=3),
        splits=["blocks.0"],
        example_inputs=(torch.randn(2, 3, 8, 8),),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    )
    optimizers = [s.optimizer for s in dm.stages]
    assert all(isinstance(o, torch.optim.SGD) for o in optimizers)
    assert optimizers[0] is not optimizers[1]
    owned = [{id(p) for g in o.param_groups for p in g["params"]} for o in optimizers]
    assert not owned[0] & owned[1]
    for stage, ids in zip(dm.stages, owned):
        assert ids == {id(p) for p in stage.parameters()}


def test_eval_mode_freezes_batch_norm_statistics() -> None:
    dm = _convert()
    x, y = _batches(1)[0]
    dm.eval()
    before = [b.clone() for b in dm.buffers()]
    dm.train_step(x, target=y)  # eval-mode training: running stats stay put
    assert all(torch.equal(a, b) for a, b in zip(before, dm.buffers()))
    dm.train()
    dm.train_step(x, target=y)
    assert not all(torch.equal(a, b) for a, b in zip(before, dm.buffers()))


def test_inference_module_is_an_independent_snapshot() -> None:
    dm = _convert()
    x, y = _batches(1)[0]
    snap = dm.inference_module()
    with torch.no_grad():
        before = snap(x)
    dm.train_step(x, target=y)
    with torch.no_grad():
        torch.testing.assert_close(snap(x), before)
    assert not snap.training


class _Explodes(torch.nn.Module):
    """Stage 1 produces inf once its input exceeds a bound: a non-finite local loss on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) * torch.exp(h.abs().max() * 100.0)


@pytest.mark.parametrize("method", ["scl", "bp"])
def test_nonfinite_loss_raises_with_stage_and_batch(method: str) -> None:
    dm = decouple.convert(_Explodes(), method=method, splits=["a"], example_inputs=(torch.randn(2, 4),))
    dm.train_step(torch.zeros(4, 4), target=torch.tensor([0, 0, 1, 1]))
    with pytest.raises(
        decouple.StageError, match=r"stage 1: local loss is (nan|inf) at batch 1.*on_nonfinite='skip'"
    ) as info:
        dm.train_step(torch.randn(4, 4) * 10, target=torch.tensor([0, 0, 1, 1]))
    assert info.value.stage == 1 and info.value.batch == 1


def test_nonfinite_loss_skip_policy_counts_and_keeps_weights() -> None:
    dm = decouple.convert(_Explodes(), splits=["a"], example_inputs=(torch.randn(2, 4),), on_nonfinite="skip")
    before = [p.detach().clone() for p in dm.stages[1].parameters()]
    dm.train_step(torch.randn(4, 4) * 10, target=torch.tensor([0, 0, 1, 1]))
    assert dm.stages[1].skipped_steps == 1 and dm.stages[0].skipped_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, dm.stages[1].parameters()))
    with pytest.raises(decouple.ConfigError, match="on_nonfinite must be"):
        decouple.convert(_Explodes(), splits=["a"], example_inputs=(torch.randn(2, 4),), on_nonfinite="ignore")


def _pipelined(dm: decouple.DecoupledModel, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with dm.pipeline(depth=2) as pipe:
        for x, y in batches:
            pipe.submit(x, target=y)
        pipe.drain()


def _convert_method(method: str, seed: int = 0) -> decouple.DecoupledModel:
    torch.manual_seed(seed)
    return decouple.convert(ResCNN(channels=4, blocks=2, num_classes=3), method=method, splits=["blocks.0", "blocks.1"],
                            example_inputs=(torch.randn(2, 3, 8, 8),), **small_options(method))  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", registered_methods(decoupled=True))
def test_pipelined_resume_is_bit_identical(method: str) -> None:
    """Stop a pipelined run mid-training, reload its checkpoint into a fresh conversion, and pipeline on.

    With one intra-op thread the result equals an uninterrupted pipelined run and an uninterrupted
    sequential one, bit for bit (parameters, buffers, optimizer states, step count).
    """
    data = _batches(6)
    with one_thread():
        straight = _convert_method(method)
        _pipelined(straight, data)
        sequential = _convert_method(method)
        for x, y in data:
            sequential.train_step(x, target=y)

        first = _convert_method(method)
        _pipelined(first, data[:3])
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        buffer.seek(0)
        resumed = _convert_method(method, seed=123)  # other random heads: the checkpoint must overwrite them
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
        assert resumed.steps == 3
        _pipelined(resumed, data[3:])
    assert resumed.steps == straight.steps == 6
    for reference in (straight, sequential):
        left, right = pytree_leaves(reference.state_dict()), pytree_leaves(resumed.state_dict())
        assert len(left) == len(right)
        for a, b in zip(left, right):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def pytree_leaves(value: object) -> list[object]:
    import torch.utils._pytree as pytree

    return pytree.tree_leaves(value)


def test_effective_state_dict_keeps_module_versions() -> None:
    """Modules that check their state-dict version on load (torchvision's MNASNet) load the trained weights."""
    import torchvision

    model = torchvision.models.mnasnet0_5(num_classes=4)
    dm = decouple.convert(model, splits=["layers.8"], example_inputs=(torch.randn(2, 3, 32, 32),))
    fresh = torchvision.models.mnasnet0_5(num_classes=4)
    fresh.load_state_dict(dm.effective_state_dict(), strict=True)
    buffer = io.BytesIO()
    torch.save(dm.effective_state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
