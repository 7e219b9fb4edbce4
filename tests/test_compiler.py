"""What the compiler does at cuts: carried values, detaches, clones, mode-dependent graphs."""

from __future__ import annotations

import pytest
import torch

import decouple

from .helpers import assert_gradient_isolation
from .models import (
    FunctionalDropout,
    InplaceAfterCut,
    ParamOnlyMoved,
    ResCNN,
    ShapeCarrier,
    UsesTuple,
)


def test_long_skip_is_carried_through_every_stage() -> None:
    model = ResCNN(channels=4, blocks=3)
    x = torch.randn(4, 3, 8, 8)
    dm = decouple.convert(model, splits=["blocks.0", "blocks.1"], example_inputs=(x,))
    # the stem output ("stem_2") is read by the last stage: it crosses both cuts
    assert "stem_2" in dm.stages[0].io[True].message_out
    assert "stem_2" in dm.stages[1].io[True].message_out
    assert "stem_2" not in dm.stages[1].io[True].inputs  # stage 1 only carries it
    assert "stem_2" in dm.stages[2].io[True].inputs


def test_every_crossing_tensor_is_detached_in_generated_code() -> None:
    model = ResCNN(channels=4, blocks=2)
    x = torch.randn(4, 3, 8, 8)
    dm = decouple.convert(model, splits=["blocks.0"], example_inputs=(x,))
    code = dm.stages[1].module.code
    for name in dm.stages[1].io[True].inputs:
        assert f"{name}.detach()" in code


def test_backprop_keeps_the_gradient_path() -> None:
    model = ResCNN(channels=4, blocks=2)
    dm = decouple.convert(model, method="bp", splits=["blocks.0"], example_inputs=(torch.randn(2, 3, 8, 8),))
    assert ".detach()" not in dm.stages[1].module.code


def test_non_tensor_values_pass_untouched() -> None:
    model = ShapeCarrier()
    x = torch.randn(4, 3, 8, 8)
    dm = decouple.convert(model, splits=["a"], example_inputs=(x,))
    io = dm.stages[1].io[True]
    assert "size" in io.inputs and io.shapes["size"] == 4
    assert "size.detach" not in dm.stages[1].module.code
    model.eval()
    dm.eval()
    with torch.no_grad():
        torch.testing.assert_close(dm(x), model(x))
        bigger = torch.randn(6, 3, 8, 8)
        torch.testing.assert_close(dm.inference_module()(bigger), model(bigger))


def test_inplace_op_after_cut_clones_its_input() -> None:
    model = InplaceAfterCut()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    dm = decouple.convert(model, splits=["a"], example_inputs=(x,), head="linear", head_dims=(4,))
    assert "clone = detach.clone()" in dm.stages[1].module.code
    losses = dm.local_losses(x, target=y)
    sum(losses).backward()  # raises "modified by an inplace operation" without the clone
    stage0 = dm.stages[0]
    grads = [p.grad.clone() for p in stage0.parameters()]
    for p in dm.parameters():
        p.grad = None
    dm.local_losses(x, target=y)[0].backward()
    for g, p in zip(grads, stage0.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_no_clone_without_inplace_user() -> None:
    model = ResCNN(channels=4, blocks=2)
    dm = decouple.convert(model, splits=["blocks.0"], example_inputs=(torch.randn(2, 3, 8, 8),))
    assert "clone" not in dm.stages[1].module.code


def test_mode_dependent_branches_use_one_graph_per_mode() -> None:
    model = FunctionalDropout()
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    dm = decouple.convert(model, splits=["a", "b"], example_inputs=(x,))
    stage = dm.stages[1]
    assert stage.eval_module is not stage.module
    assert "True" in stage.module.code and "False" in stage.eval_module.code
    dm.train()
    with torch.no_grad():
        assert not torch.equal(dm(x), dm(x))  # dropout active
    dm.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(dm(x), model(x))
        torch.testing.assert_close(dm.inference_module()(x), model(x))
    dm.train()
    dm.train_step(x, target=y)
    assert_gradient_isolation(dm, x, target=y)


def test_head_reads_first_tensor_of_a_tuple_output() -> None:
    model = UsesTuple()
    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    dm = decouple.convert(model, splits=["block"], example_inputs=(x,), head="linear", head_dims=(5,))
    rep = dm.stages[0].io[True].representation
    assert dm.stages[0].io[True].shapes[rep][0] == (6, 8)  # the features, not the (6, 2) aux
    assert_gradient_isolation(dm, x, target=y)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(dm.inference_module()(x), model(x))


def test_parameter_only_value_moves_to_its_reader() -> None:
    model = ParamOnlyMoved()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    dm = decouple.convert(model, splits=["a"], example_inputs=(x,))
    assert "exp" in dm.stages[1].module.code and "exp" not in dm.stages[0].module.code
    assert any(p is dm.stages[1].module.scale for p in dm.stages[1].parameters())
    assert_gradient_isolation(dm, x, target=y)


def test_generated_code_is_readable_and_keeps_qualified_names() -> None:
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    dm = decouple.convert(model, splits=["layer1", "layer2"], example_inputs=(torch.randn(2, 3, 32, 32),))
    code = dm.stages[1].module.code
    assert "def forward(self, layer1_1_relu_1)" in code
    assert "self.layer2" in code
    keys = set(dm.stages[1].module.state_dict())
    assert keys <= set(model.state_dict()) and any(k.startswith("layer2.") for k in keys)


def test_convert_never_mutates_the_users_model() -> None:
    model = ResCNN(channels=4, blocks=2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = str(model)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    dm = decouple.convert(model, splits=["blocks.0"], example_inputs=(x,))
    for _ in range(2):
        dm.train_step(x, target=y)
    dm.eval()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert str(model) == structure and model.training
    assert type(model).forward is ResCNN.forward


def test_copy_model_false_trains_the_users_parameters_in_place() -> None:
    model = ResCNN(channels=4, blocks=2)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    dm = decouple.convert(model, splits=["blocks.0"], example_inputs=(x,), copy_model=False)
    before = model.fc.weight.detach().clone()
    dm.train_step(x, target=y)
    assert not torch.equal(before, model.fc.weight)


@pytest.mark.parametrize("pool", ["flatten", "avg", "auto"])
@pytest.mark.parametrize("crossing", ["all", "main"])
def test_pool_options_size_the_head(pool: str, crossing: str) -> None:
    """The long skip crosses the cut beside blocks.0: with crossing="all" the head pools both tensors."""
    model = ResCNN(channels=4, blocks=2)
    x = torch.randn(2, 3, 8, 8)
    dm = decouple.convert(
        model, splits=["blocks.0"], example_inputs=(x,), pool=pool, head="linear", head_dims=(7,), crossing=crossing
    )
    linear = dm.stages[0].objective.projector
    expected = {"flatten": 4 * 8 * 8, "avg": 4 * 4 * 4, "auto": 4 * 4 * 4}[pool]
    assert linear.in_features == expected * (2 if crossing == "all" else 1)


def test_default_pool_makes_heads_resolution_independent() -> None:
    model = ResCNN(channels=4, blocks=2)
    dm = decouple.convert(model, splits=["blocks.0"], example_inputs=(torch.randn(2, 3, 8, 8),))
    dm.train_step(torch.randn(4, 3, 16, 16), target=torch.randint(0, 5, (4,)))  # other resolution
    flat = decouple.convert(model, splits=["blocks.0"], example_inputs=(torch.randn(2, 3, 8, 8),), pool="flatten")
    with pytest.raises(RuntimeError):
        flat.train_step(torch.randn(4, 3, 16, 16), target=torch.randint(0, 5, (4,)))
