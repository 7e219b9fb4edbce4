"""Awkward models and bad input: every case converts correctly or fails with a clear decouple error.

Each error names the cause and the fix, and neither the user's model nor (for bad targets) the
converted model is left half-changed.
"""

from __future__ import annotations

import collections
import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import decouple
from decouple import ConfigError, InputError, SplitError, TargetError, TraceError

from .helpers import assert_gradient_isolation, assert_inference_equals_original
from .models import MLP, DataDependent, ResCNN

METHODS = ["scl", "al", "early_exit", "bp"]
DECOUPLED = ["scl", "al", "early_exit"]


@contextlib.contextmanager
def unchanged(model: nn.Module) -> Iterator[None]:
    """The block leaves ``model``'s state, structure, mode and forward as they were."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    structure, mode, forward = str(model), [m.training for m in model.modules()], type(model).forward
    yield
    assert str(model) == structure and [m.training for m in model.modules()] == mode
    assert type(model).forward is forward
    after = model.state_dict()
    assert set(after) == set(state) and all(torch.equal(state[k], after[k]) for k in state)


def _check_converted(model: nn.Module, dm: decouple.DecoupledModel, method: str, inputs: tuple[Any, ...],
                     target: torch.Tensor, kwargs: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Transparency in eval mode (al: the right shape), gradient isolation, and a finite training step."""
    kwargs = kwargs or {}
    assert_inference_equals_original(model, dm, method, *inputs, **kwargs)
    dm.train()
    if method != "bp":
        assert_gradient_isolation(dm, *inputs, target=target, **kwargs)
    losses = dm.train_step(*inputs, target=target, **kwargs)
    assert losses and all(math.isfinite(v) for v in losses.values())


# -- modules returning dicts, tuples, None -------------------------------------------------------
class DictBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.aux = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"feat": torch.relu(self.lin(x)), "aux": self.aux(x)}


class UsesDict(nn.Module):
    """A split point whose module returns a dict: the head reads its first tensor, the rest is carried."""

    def __init__(self) -> None:
        super().__init__()
        self.block = DictBlock()
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.block(x)
        h = torch.relu(self.mid(d["feat"]))
        return self.out(torch.cat([h, d["aux"]], dim=1))


class Logger(nn.Module):
    """Returns None: a side effect only."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> None:
        self.probe(x)


class UsesNone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.log = Logger()
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        self.log(h)
        return self.out(h)


class Returns(nn.Module):
    """The model's output is a dict, a tuple, or None."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> Any:
        h = torch.relu(self.a(x))
        logits = self.out(h)
        if self.kind == "dict":
            return {"scores": logits, "features": h}  # no "logits" key: the default loss cannot read it
        if self.kind == "tuple":
            return logits, h
        return None


def _first_logits(output: Any, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output["scores"] if isinstance(output, dict) else output[0], target)


X6, Y4 = torch.randn(4, 6), torch.tensor([0, 1, 0, 2])


@pytest.mark.parametrize("method", METHODS)
def test_split_at_a_module_returning_a_dict(method: str) -> None:
    model = UsesDict()
    dm = decouple.convert(model, method=method, splits=["block"], example_inputs=(X6,))
    assert len(dm.stages[0].io[True].message_out) == 2  # both values of the dict cross the cut
    _check_converted(model, dm, method, (X6,), Y4)


@pytest.mark.parametrize("method", METHODS)
def test_split_at_a_module_returning_none_is_refused(method: str) -> None:
    model = UsesNone()
    with (
        unchanged(model),
        pytest.raises(SplitError, match=r"module 'log' returns no tensor.*split at a module that returns a tensor"),
    ):
        decouple.convert(model, method=method, splits=["log"], example_inputs=(X6,))


@pytest.mark.parametrize("kind", ["dict", "tuple"])
@pytest.mark.parametrize("method", METHODS)
def test_model_returning_a_structure(kind: str, method: str) -> None:
    model = Returns(kind)
    with unchanged(model):
        if method in ("al", "early_exit"):
            with pytest.raises(ConfigError, match=rf"needs the number of classes.*\({kind}, expected.*num_classes=C"):
                decouple.convert(model, method=method, splits=["a"], example_inputs=(X6,))
        else:
            with pytest.raises(
                ConfigError, match=rf"returns {kind}, neither a logits tensor.*loss_fn=lambda output, target"
            ):
                decouple.convert(model, method=method, splits=["a"], example_inputs=(X6,))
    dm = decouple.convert(
        model, method=method, splits=["a"], example_inputs=(X6,), loss_fn=_first_logits, num_classes=3
    )
    model.eval()
    dm.eval()
    with torch.no_grad():
        got, want = dm.inference_module()(X6), model(X6)
    if method == "al":
        assert got.shape == (4, 3)
    else:
        torch.testing.assert_close(got, want)
    dm.train()
    assert all(math.isfinite(v) for v in dm.train_step(X6, target=Y4).values())
    if method != "bp":
        with dm.pipeline() as pipe:
            pipe.submit(X6, target=Y4)
            assert pipe.drain().batches == 1


@pytest.mark.parametrize("method", ["scl", "early_exit", "bp"])
def test_model_returning_none_is_refused_even_with_a_loss(method: str) -> None:
    model = Returns("none")
    with unchanged(model), pytest.raises(ConfigError, match="returns None, so the last stage has nothing to train on"):
        decouple.convert(model, method=method, splits=["a"], example_inputs=(X6,), loss_fn=_first_logits, num_classes=3)


Outputs = collections.namedtuple("Outputs", ["logits", "aux_logits"])


class AuxHead(nn.Module):
    """Like inception_v3 / googlenet: a named tuple with an auxiliary head in training, logits in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 8)
        self.aux = nn.Linear(8, 3)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> Any:
        h = torch.relu(self.a(x))
        aux = self.aux(h)
        logits = self.out(torch.relu(self.b(h)))
        return Outputs(logits, aux) if self.training else logits


@pytest.mark.parametrize("method", METHODS)
def test_named_tuple_output_trains_on_its_logits_by_default(method: str) -> None:
    model = AuxHead()
    dm = decouple.convert(model, method=method, splits=["a"], example_inputs=(X6,))
    if method in ("al", "early_exit"):
        assert dm.program.num_classes == 3  # read from the width of the output's .logits
    _check_converted(model, dm, method, (X6,), Y4)
    if method != "al":
        dm.train()
        loss = dm.local_losses(X6, target=Y4)[-1]
        out = dm(X6)
        assert isinstance(out, Outputs)
        torch.testing.assert_close(loss, F.cross_entropy(out.logits, Y4))  # the aux head is not in the default loss


# -- several inputs, keyword inputs --------------------------------------------------------------
class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(4, 8)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(
        self, x: torch.Tensor, z: torch.Tensor, *, bias: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        h = torch.relu(self.a(x) + self.b(z))
        h = torch.relu(self.mid(h))
        if bias is not None:
            h = h + bias  # a keyword input read only by the last stage: carried across the cut
        return self.out(h * scale)


@pytest.mark.parametrize("method", METHODS)
def test_several_inputs_and_keyword_inputs(method: str) -> None:
    model = TwoInputs()
    x, z, bias = torch.randn(4, 6), torch.randn(4, 4), torch.randn(4, 8)
    dm = decouple.convert(model, method=method, splits=["a", "mid"], example_inputs={"x": x, "z": z, "bias": bias},
                          num_classes=3)  # fmt: skip
    assert dm.stages[0].io[True].inputs == ["x"]
    _check_converted(model, dm, method, (x, z), Y4, {"bias": bias})
    dm.train_step(x=x, z=z, bias=bias, target=Y4)  # all by keyword
    with pytest.raises(InputError, match=r"missing input\(s\) 'z', 'bias'.*pass them positionally or by keyword"):
        dm.train_step(x, target=Y4)
    with pytest.raises(InputError, match=r"'scale' was not in example_inputs.*pass it in example_inputs"):
        dm.train_step(x, z, bias=bias, scale=2.0, target=Y4)
    if method != "bp":
        with dm.pipeline() as pipe:
            pipe.submit(x, z=z, bias=bias, target=Y4)
            pipe.submit(x=x, z=z, bias=bias, target=Y4)
            assert pipe.drain().batches == 2


# -- in-place ops on a tensor that crosses a cut -------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_resnet_inplace_relu_after_a_cut(method: str) -> None:
    """Cut between ``bn1`` and ``relu(inplace=True)`` of resnet's first block: the crossing tensor is cloned."""
    model = torchvision.models.resnet18(num_classes=4)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    dm = decouple.convert(model, method=method, splits=["layer1.0.bn1", "layer2"], example_inputs=(x[:2],))
    code = dm.stages[1].module.code
    if method != "bp":
        assert "layer1_0_bn1.detach()" in code and "clone = detach" in code
    _check_converted(model, dm, method, (x,), y)
    for loss in dm.local_losses(x, target=y):  # each backward succeeds: no "modified by an inplace operation"
        loss.backward()


# -- buffers updated in forward ------------------------------------------------------------------
class Counter(nn.Module):
    """Counts its calls in a buffer updated in place during forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return torch.relu(self.lin(x))


class Counted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.counter = Counter()
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.counter(torch.relu(self.a(x))))


@pytest.mark.parametrize("method", DECOUPLED)
def test_batch_norm_statistics_live_in_their_stage(method: str) -> None:
    """After one step, each stage holds the running statistics the original model gets from one forward."""
    torch.manual_seed(0)
    model = ResCNN(channels=4, blocks=2, num_classes=3)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    dm = decouple.convert(model, method=method, splits=["blocks.0", "blocks.1"], example_inputs=(x[:2],))
    dm.train_step(x, target=y)
    model.train()
    with torch.no_grad():
        model(x)  # the same forward on the same parameters: the same batch statistics
    reference = model.state_dict()
    kept = dm.effective_state_dict()
    for k, stage in enumerate(dm.stages):
        buffers = dict(stage.module.named_buffers())
        if k < 2:
            assert f"blocks.{k}.bn1.running_mean" in buffers, f"stage {k} lacks blocks.{k}'s batch-norm statistics"
        for name, value in buffers.items():
            assert not any(name in dict(other.module.named_buffers()) for other in dm.stages if other is not stage)
            torch.testing.assert_close(value, reference[name])
            torch.testing.assert_close(kept[name], value)  # al: the inference module keeps the encoders' buffers
    assert int(kept["blocks.1.bn2.num_batches_tracked"]) == 1


def test_a_buffer_updated_in_forward_stays_with_its_stage() -> None:
    model = Counted()
    dm = decouple.convert(model, splits=["a"], example_inputs=(X6,))
    assert "counter.calls" in dict(dm.stages[1].module.named_buffers())
    assert "counter.calls" not in dict(dm.stages[0].module.named_buffers())
    for _ in range(3):
        dm.train_step(X6, target=Y4)
    assert int(dm.effective_state_dict()["counter.calls"]) == 3
    assert int(model.counter.calls) == 0  # the user's model is untouched
    fresh = Counted()
    fresh.load_state_dict(dm.effective_state_dict(), strict=True)
    assert int(fresh.counter.calls) == 3


# -- targets -------------------------------------------------------------------------------------
BAD_TARGETS = {
    "float": (torch.randn(4), r"integer class indices|class probabilities and must have the logits' shape"),
    "2-d": (torch.zeros(4, 2, dtype=torch.long), r"shape \(4,\)"),
    "too short": (torch.tensor([0, 1]), r"shape \(4,\)"),
    "out of range": (torch.tensor([0, 1, 7, 1]), r"class indices in \[0, 4\)"),
    "bool": (torch.tensor([True, False, True, False]), r"dtype torch.bool"),
    "list": ([0, 1, 0, 1], r"as a tensor"),
}


@pytest.mark.parametrize("bad", sorted(BAD_TARGETS))
@pytest.mark.parametrize("method", METHODS)
def test_bad_targets_fail_before_any_stage_steps(method: str, bad: str) -> None:
    target, match = BAD_TARGETS[bad]
    model = MLP([10, 16, 16], num_classes=4)
    x = torch.randn(4, 10)
    with unchanged(model):
        dm = decouple.convert(model, method=method, splits=["layers.0"], example_inputs=(x,))
        before = [t.detach().clone() for t in [*dm.parameters(), *dm.buffers()]]
        with pytest.raises(TargetError, match=match):
            dm.train_step(x, target=target)
        after = [t.detach() for t in [*dm.parameters(), *dm.buffers()]]
        assert all(torch.equal(a, b) for a, b in zip(before, after)), "a stage stepped before the error"
        assert dm.steps == 0


@pytest.mark.parametrize("method", DECOUPLED)
def test_bad_target_in_the_pipeline_is_a_stage_error_caused_by_a_target_error(method: str) -> None:
    dm = decouple.convert(
        MLP([10, 16, 16], num_classes=4), method=method, splits=["layers.0"], example_inputs=(torch.randn(2, 10),)
    )
    with pytest.raises(decouple.StageError, match="stage 0 .*batch 1: TargetError") as info, dm.pipeline() as pipe:
        pipe.submit(torch.randn(4, 10), target=torch.tensor([0, 1, 0, 1]))
        pipe.submit(torch.randn(4, 10), target=torch.randn(4))
        pipe.drain()
    assert isinstance(info.value.__cause__, TargetError)


def test_class_probabilities_are_valid_targets_for_the_default_loss() -> None:
    dm = decouple.convert(
        MLP([10, 16, 16], num_classes=4), method="bp", splits=["layers.0"], example_inputs=(torch.randn(2, 10),)
    )
    probs = torch.softmax(torch.randn(4, 4), dim=1)
    assert math.isfinite(dm.train_step(torch.randn(4, 10), target=probs)["stage1"])
    assert math.isfinite(
        dm.train_step(torch.randn(4, 10), target=torch.tensor([0, -100, 3, 1]))["stage1"]
    )  # ignore_index


# -- tiny and single-class batches ---------------------------------------------------------------
@pytest.mark.parametrize("method", DECOUPLED)
def test_batch_of_one_and_single_class_batches_stay_finite(method: str) -> None:
    torch.manual_seed(0)
    dm = decouple.convert(
        MLP([10, 16, 16], num_classes=4), method=method, splits=["layers.0"], example_inputs=(torch.randn(2, 10),)
    )
    before = [p.detach().clone() for p in dm.parameters()]
    batches = [(torch.randn(1, 10), torch.tensor([2])), (torch.randn(5, 10), torch.zeros(5, dtype=torch.long))]
    for x, y in batches:
        losses = dm.train_step(x, target=y)
        assert all(math.isfinite(v) for v in losses.values()), losses
    with dm.pipeline() as pipe:
        for x, y in batches:
            pipe.submit(x, target=y)
        stats = pipe.drain()
    assert all(math.isfinite(v) for v in stats.losses.values()), stats.losses
    assert all(torch.isfinite(p).all() for p in dm.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, dm.parameters()))


# -- models fx cannot trace ----------------------------------------------------------------------
class ShapeBranch(nn.Module):
    """Python control flow on a shape: torch.fx cannot trace it, torch.export specialises it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if x.shape[1] > 4:
            h = h * 2.0
        return self.b(h)


@pytest.mark.parametrize("model_class", [ShapeBranch, DataDependent])
def test_untraceable_model_without_the_export_fallback(model_class: type[nn.Module]) -> None:
    model = model_class()
    x = torch.randn(2, model.a.in_features)
    with (
        unchanged(model),
        pytest.raises(TraceError, match=r"(?s)could not trace.*failing line.*Fix:.*leaf_modules.*tracer='export'"),
    ):
        decouple.convert(model, splits=["a"], example_inputs=(x,), tracer="fx")


def test_shape_branch_converts_through_the_export_fallback() -> None:
    model = ShapeBranch()
    x = torch.randn(4, 6)
    with unchanged(model), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = decouple.convert(model, splits=["a"], example_inputs=(x,))
    assert any(issubclass(w.category, decouple.TracerFallbackWarning) for w in caught)
    _check_converted(model, dm, "scl", (x,), Y4)


def test_data_dependent_branch_is_refused_by_both_frontends_with_the_fix() -> None:
    model = DataDependent()  # `if h.sum() > 0:` in the root's forward: neither fx nor export can record it
    x = torch.randn(4, 4)
    with unchanged(model), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            TraceError,
            match=r"(?s)torch\.export could not trace DataDependent: GuardOnDataDependent.*Fix: make forward exportable",
        ):
            decouple.convert(model, splits=["a"], example_inputs=(x,))
    assert any(issubclass(w.category, decouple.TracerFallbackWarning) for w in caught)
