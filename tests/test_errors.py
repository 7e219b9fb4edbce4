"""Every bad input raises a decouple error that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
import torchvision

import decouple
from decouple import ConfigError, InputError, SplitError, TargetError, TiedParameterError, TraceError

from .models import MLP, DataDependent, ParamOnlyValue, Reused, SideBranch, Tied

X32 = (torch.randn(2, 3, 32, 32),)


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return torchvision.models.resnet18(num_classes=10)


@pytest.mark.parametrize(
    "splits, match",
    [
        (["layer5"], r"unknown split 'layer5'.*did you mean .*'layer4'"),
        (["layer1", "layer1"], r"'layer1' is listed twice"),
        (["layer2", "layer1"], r"out of forward order: 'layer1' runs before 'layer2'"),
        (["fc"], r"leaves the last stage empty"),
        (["layer1", "layer1.1"], r"cut the graph at the same place"),
        (["layer1.0.relu"], r"ambiguous: module 'layer1.0.relu' runs 2 times.*layer1_0_relu"),
        ([], r"splits is empty"),
        ("layer1", r"must be a list of names.*splits=\['layer1'\]"),
        ([3], r"is not a name"),
    ],
)
def test_bad_splits(resnet, splits, match: str) -> None:
    with pytest.raises(SplitError, match=match):
        decouple.convert(resnet, splits=splits, example_inputs=X32)


def test_split_by_fx_node_name(resnet) -> None:
    dm = decouple.convert(resnet, splits=["layer1_0_relu_1"], example_inputs=X32)
    assert dm.num_stages == 2


def test_reused_module_is_ambiguous_and_suggests_node_names() -> None:
    with pytest.raises(SplitError, match=r"runs 2 times.*'shared', 'shared_1'"):
        decouple.convert(Reused(), splits=["shared"], example_inputs=(torch.randn(2, 4),))
    dm = decouple.convert(Reused(), splits=["inp"], example_inputs=(torch.randn(2, 4),))
    assert dm.num_stages == 2


def test_reused_module_across_stages_is_a_tied_parameter() -> None:
    with pytest.raises(TiedParameterError, match=r"'shared.weight' is used by more than one stage"):
        decouple.convert(Reused(), splits=["relu"], example_inputs=(torch.randn(2, 4),))


def test_tied_weights_name_both_stages() -> None:
    ids = torch.randint(0, 10, (2, 5))
    with pytest.raises(
        TiedParameterError, match=r"'embed.weight' \(also registered as 'lm.weight'\).*stage 0.*stage 1.*untie"
    ):
        decouple.convert(Tied(), splits=["mid"], example_inputs=(ids,), loss_fn=lambda o, t: o.sum())


def test_parameter_derived_value_crossing_a_cut() -> None:
    with pytest.raises(TiedParameterError, match=r"'mul' is computed from parameters only.*lose its gradient"):
        decouple.convert(ParamOnlyValue(), splits=["b"], example_inputs=(torch.randn(2, 4),))


def test_split_that_does_not_cut_the_graph() -> None:
    with pytest.raises(SplitError, match=r"'side' does not cut the graph"):
        decouple.convert(SideBranch(), splits=["side"], example_inputs=(torch.randn(2, 4),))


def test_unknown_method_lists_methods() -> None:
    with pytest.raises(ConfigError, match=r"unknown method 'nonsense'.*'scl'.*'al'.*'early_exit'.*'bp'"):
        decouple.convert(MLP([4, 4, 4]), method="nonsense", splits=["layers.0"], example_inputs=(torch.randn(2, 4),))


def test_unknown_option_suggests_close_match() -> None:
    with pytest.raises(ConfigError, match=r"'temprature'.*did you mean 'temperature'"):
        decouple.convert(MLP([4, 4, 4]), splits=["layers.0"], example_inputs=(torch.randn(2, 4),), temprature=0.5)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"temperature": -1}, "temperature must be a positive"),
        ({"head": "transformer"}, "unknown head 'transformer'"),
        ({"pool": "median"}, "unknown pool 'median'"),
        ({"supcon_variant": "v2"}, "supcon_variant must be"),
        ({"head_dims": (0, 4)}, "head_dims must be positive"),
        ({"optimizer": torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)}, "factory, not an optimizer"),
        ({"optimizer": lambda params: torch.optim.SGD(params, lr=-1.0)}, "optimizer factory failed for stage 0"),
        ({"optimizer": lambda params: list(params)}, "returned list, expected a torch.optim.Optimizer"),
        ({"devices": ["cpu", "cpu", "cpu"]}, "3 devices for 2 stages"),
        ({"tracer": "jit"}, "unknown tracer 'jit'"),
        ({"loss_fn": 3}, "loss_fn must be callable"),
    ],
)
def test_bad_options(options, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        decouple.convert(MLP([4, 6, 4]), splits=["layers.0"], example_inputs=(torch.randn(2, 4),), **options)


def test_cuda_device_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="not available here"):
        decouple.convert(
            MLP([4, 6, 4]), splits=["layers.0"], example_inputs=(torch.randn(2, 4),), devices=["cpu", "cuda:0"]
        )


def test_untraceable_model_explains_the_fix() -> None:
    with pytest.raises(
        TraceError, match=r"(?s)could not trace DataDependent.*if h.sum\(\) > 0.*leaf_modules.*tracer='export'"
    ):
        decouple.convert(DataDependent(), splits=["a"], example_inputs=(torch.randn(2, 4),), tracer="fx")


def test_leaf_modules_make_a_construct_opaque() -> None:
    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = torch.nn.Linear(4, 4)
            self.body = DataDependent()

        def forward(self, x):
            return self.body(self.first(x))

    with pytest.raises(TraceError, match=r"(?s)while tracing module 'body'.*leaf_modules=\['body'\]"):
        decouple.convert(Wrapper(), splits=["first"], example_inputs=(torch.randn(2, 4),), tracer="fx")
    dm = decouple.convert(
        Wrapper(), splits=["first"], example_inputs=(torch.randn(2, 4),), tracer="fx", leaf_modules=["body"]
    )
    assert "self.body(" in dm.stages[1].module.code


def test_missing_example_inputs() -> None:
    with pytest.raises(InputError, match="example_inputs is required"):
        decouple.convert(MLP([4, 4, 4]), splits=["layers.0"])


def test_example_inputs_that_do_not_fit_forward() -> None:
    with pytest.raises(InputError, match="do not match"):
        decouple.convert(MLP([4, 4, 4]), splits=["layers.0"], example_inputs=(torch.randn(2, 4), torch.randn(2)))


def test_bad_targets_for_scl() -> None:
    dm = decouple.convert(MLP([4, 6, 4]), splits=["layers.0"], example_inputs=(torch.randn(2, 4),))
    with pytest.raises(TargetError, match="integer class indices"):
        dm.train_step(torch.randn(4, 4), target=torch.randn(4))
    with pytest.raises(TargetError, match=r"shape \(4,\)"):
        dm.train_step(torch.randn(4, 4), target=torch.zeros(4, 2, dtype=torch.long))


def test_specialised_argument_cannot_be_passed_later() -> None:
    class WithMask(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = torch.nn.Linear(4, 3)

        def forward(self, x, mask=None):
            h = self.a(x)
            if mask is not None:
                h = h * mask
            return self.b(h)

    dm = decouple.convert(WithMask(), splits=["a"], example_inputs=(torch.randn(2, 4),))
    dm.train_step(torch.randn(4, 4), target=torch.randint(0, 3, (4,)))
    with pytest.raises(InputError, match=r"'mask' was not in example_inputs"):
        dm.train_step(torch.randn(4, 4), torch.ones(4, 4), target=torch.randint(0, 3, (4,)))
    dm2 = decouple.convert(WithMask(), splits=["a"], example_inputs={"x": torch.randn(2, 4), "mask": torch.ones(2, 4)})
    dm2.train_step(x=torch.randn(4, 4), mask=torch.ones(4, 4), target=torch.randint(0, 3, (4,)))


def test_errors_are_value_errors_for_generic_handlers() -> None:
    assert issubclass(decouple.DecoupleError, ValueError)
    for cls in (SplitError, ConfigError, TraceError, TargetError, TiedParameterError, InputError):
        assert issubclass(cls, decouple.DecoupleError)


def test_stage_head_must_read_a_value_its_stage_computes() -> None:
    from .models import UsesTuple

    # "relu" cuts inside `block`, so block's output (relu) belongs to stage 0, not stage 1
    with pytest.raises(SplitError, match=r"'block' ends stage 1, but its output 'relu' is computed in stage 0"):
        decouple.convert(UsesTuple(), splits=["relu", "block"], example_inputs=(torch.randn(4, 6),))


class _SharedInList(torch.nn.Module):
    """Layer ``blocks.1`` reuses ``blocks.0``'s weight: the fix text must name it as Python can."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
        self.blocks[1].weight = self.blocks[0].weight
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks[1](torch.relu(self.blocks[0](x))))


def test_tied_parameter_fix_is_valid_python_that_unties() -> None:
    import ast
    import re

    model = _SharedInList()
    with pytest.raises(TiedParameterError) as info:
        decouple.convert(model, splits=["blocks.0"], example_inputs=(torch.randn(2, 4),))
    fix = re.search(r"`([^`]*nn\.Parameter[^`]*)`", str(info.value))
    assert fix is not None, str(info.value)
    ast.parse(fix.group(1))  # model.blocks.0.weight would be a SyntaxError
    assert "get_submodule('blocks." in fix.group(1)
    exec(fix.group(1), {"model": model, "nn": torch.nn})  # the fix does what it says: the stages convert
    decouple.convert(model, splits=["blocks.0"], example_inputs=(torch.randn(2, 4),))
