"""copy_module: what ``copy.deepcopy`` gives a module tree, by a faster path for plain modules."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from decouple.frontend.preserve import copy_module


class Tied(nn.Module):
    """Shared submodules and tied weights, a registered hook, plain and tensor-holding attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight  # tied
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.again = self.block  # the same module under two names
        self.scales = [torch.ones(4), 2.0]  # not registered: deepcopy still copies it
        self.config = {"width": 4}
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.block.register_forward_hook(lambda module, args, out: out * 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.again(self.block(self.embed(ids))) * self.scales[0])


class OwnCopy(nn.Linear):
    """A class with its own __deepcopy__: copy_module must use it."""

    def __deepcopy__(self, memo: dict[int, Any]) -> OwnCopy:
        new = OwnCopy(self.in_features, self.out_features)
        new.load_state_dict(self.state_dict())
        new.copied_by_hook = True  # type: ignore[assignment]
        return new


def _tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(m.named_parameters(remove_duplicate=False)), **dict(m.named_buffers(remove_duplicate=False))}


@pytest.mark.parametrize("make", [Tied, lambda: torchvision.models.resnet18(num_classes=3),
                                  lambda: torchvision.models.mobilenet_v3_small(num_classes=3)])  # fmt: skip
def test_copy_module_matches_deepcopy(make: Any) -> None:
    torch.manual_seed(0)
    model = make()
    copied, reference = copy_module(model), copy.deepcopy(model)
    assert type(copied) is type(model)
    original, ours, theirs = _tensors(model), _tensors(copied), _tensors(reference)
    assert list(ours) == list(original) == list(theirs)
    for name, tensor in original.items():
        assert torch.equal(ours[name], tensor) and ours[name].data_ptr() != tensor.data_ptr()
        assert type(ours[name]) is type(tensor) and ours[name].requires_grad == tensor.requires_grad
    same = {name for name in original if ours[name] is ours[next(n for n in original if original[n] is original[name])]}
    assert same == set(original)  # tensors shared in the original are shared in the copy (tied weights)
    assert [n for n, _ in copied.named_modules()] == [n for n, _ in model.named_modules()]
    assert len(list(copied.modules())) == len(list(reference.modules()))  # shared modules stay shared


def test_copy_module_copies_attributes_and_hooks_and_respects_own_deepcopy() -> None:
    model = Tied()
    model.own = OwnCopy(4, 4)
    copied = copy_module(model)
    assert copied.again is copied.block and copied.out.weight is copied.embed.weight
    assert copied.scales[0] is not model.scales[0] and copied.config == model.config
    assert copied.config is not model.config
    assert len(copied.block._forward_hooks) == 1
    assert copied.block._forward_hooks is not model.block._forward_hooks
    assert getattr(copied.own, "copied_by_hook", False)
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(copied(ids), model(ids))
    with torch.no_grad():
        copied.embed.weight.add_(1.0)
    assert not torch.equal(copied.embed.weight, model.embed.weight)  # independent storage
