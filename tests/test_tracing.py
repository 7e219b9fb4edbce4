"""Tracing paths: one trace per mode only when the modes can differ, fx retries with leaf modules,
static-size export, lifted constants, meta-device propagation, and names that never reach listings."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import decouple
from decouple.compiler.graph_view import module_calls
from decouple.frontend.tracer import trace_modes
from decouple.inspection import describe_conversion

from .helpers import assert_gradient_isolation, assert_inference_equals_original
from .models import MLP, FunctionalDropout


class ConstantScale(nn.Module):
    """Builds a tensor constant in forward: torch.export lifts it out of the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x) * torch.tensor([1.0, 2.0, 3.0, 4.0])))


class SamePadConv(nn.Conv2d):
    """TF-style 'same' padding computed in Python from the input size: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        pad_h = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - ih, 0)
        pad_w = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


class SameNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = SamePadConv(3, 8, 3, stride=2)
        self.block = nn.Sequential(SamePadConv(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


class SizeArithmetic(nn.Module):
    """A reshape whose sizes export keeps symbolic; runtime asserts get a pseudo module scope."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.reshape(x.shape[0], x.shape[1] // 2, 2))
        return self.b(h.mean(1))


def _no_recording_classes(model: nn.Module) -> bool:
    return all("training" not in type(m).__dict__ for m in model.modules())


@pytest.mark.parametrize("method", ["scl", "early_exit", "al"])
def test_a_constant_built_in_forward_exports(method: str) -> None:
    model = ConstantScale()
    x, y = torch.randn(6, 4), torch.arange(6) % 3
    dm = decouple.convert(model, method, ["a"], (x[:2],), tracer="export", num_classes=3)
    assert_inference_equals_original(model, dm, method, x)
    dm.train()
    assert_gradient_isolation(dm, x, target=y)
    dm.train_step(x, target=y)
    target = dm.inference_module() if method == "al" else ConstantScale()
    target.load_state_dict(dm.effective_state_dict(), strict=True)
    target.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(x), dm.inference_module()(x))


def test_one_trace_serves_both_modes_when_no_module_reads_its_mode() -> None:
    model = torchvision.models.resnet18(num_classes=4)  # batch norm runs as a leaf: nothing reads .training
    traces = trace_modes(model, (torch.randn(2, 3, 32, 32),), {})
    assert traces[True] is traces[False] and traces[True].mode_readers == set()
    assert _no_recording_classes(model)
    readers = trace_modes(FunctionalDropout(), (torch.randn(2, 10),), {})
    assert readers[True] is not readers[False] and readers[True].mode_readers == {""}
    exported = trace_modes(MLP([4, 8]), (torch.randn(2, 4),), {}, tracer="export")
    assert exported[True] is exported[False]  # no dropout, no batch norm: one export


def test_export_traces_again_when_dropout_reads_the_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    traces = trace_modes(model, (torch.randn(2, 4),), {}, tracer="export")
    assert traces[True] is not traces[False] and traces[True].mode_readers == {"1"}
    dm = decouple.convert(model, "scl", ["0"], (torch.randn(2, 4),), tracer="export")
    model.eval()
    dm.eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(dm(x), model(x))  # eval mode: no dropout
    assert _no_recording_classes(model) and _no_recording_classes(dm.program.root)


class ModeBranches(nn.Module):
    """Reads its mode in every way export sees: dropout, batch norm, a Python branch, a shared block
    called twice (``shared@1``), a size read from an intermediate tensor, and a scratch tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.shared(self.shared(x))
        h = h * 2 if self.training else h + 1
        scratch = h.new_zeros(h.shape[0], h.shape[1] + 1)
        scratch[:, 1:] = h
        return self.head(self.drop(self.norm(scratch[:, 1:] + h.shape[0])))


def test_export_traces_both_modes_in_one_export(monkeypatch: pytest.MonkeyPatch) -> None:
    exports = []
    real = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: exports.append(1) or real(*a, **k))
    model, x = ModeBranches(), torch.randn(4, 6)
    traces = trace_modes(model, (x,), {}, tracer="export")
    assert len(exports) == 1 and traces[True] is not traces[False]
    for mode, tr in traces.items():  # each graph is its own pass only: one dropout, in its mode, once
        drops = [n for n in tr.graph.nodes if "dropout" in str(n.target)]
        assert [n.args[2] for n in drops] == [mode]
        scopes = {key for n in tr.graph.nodes for key in n.meta.get("nn_module_stack", {})}
        assert scopes == {"shared", "shared@1", "norm", "drop", "head"}  # calls numbered as in one pass
    alone = {}
    for mode in (True, False):  # the same graphs as one export per mode
        with torch.no_grad():
            model.train(mode)
            torch.manual_seed(0)
            expected = model(x)
            torch.manual_seed(0)
            model.train(mode)
            alone[mode] = traces[mode].graph_module(x)
        torch.testing.assert_close(alone[mode], expected)
    dm = decouple.convert(model, "scl", ["norm"], (x,), tracer="export")
    assert_gradient_isolation(dm, x, target=torch.tensor([0, 1, 2, 0]))
    assert_inference_equals_original(model, dm, "scl", x)
    assert _no_recording_classes(model) and "forward" not in model.__dict__


class ComparesModeInTrain(nn.Sequential):
    """``train()`` reads the old mode, as Hugging Face's ``PreTrainedModel.train`` does; forward never does."""

    def train(self, mode: bool = True) -> ComparesModeInTrain:
        self.changed = self.training != mode
        return super().train(mode)


def test_setting_the_mode_is_not_a_read_of_it() -> None:
    model = ComparesModeInTrain(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    traces = trace_modes(model, (torch.randn(2, 4),), {}, tracer="export")
    assert traces[True] is traces[False] and traces[True].mode_readers == set()


@pytest.mark.parametrize("dynamic_sizes", ["all", "batch", "none"])
def test_dynamic_sizes_chooses_what_export_keeps_dynamic(dynamic_sizes: str) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))  # runs on (batch, tokens, 4)
    dm = decouple.convert(
        model, "scl", ["1"], (torch.randn(2, 5, 4),), tracer="export", dynamic_sizes=dynamic_sizes, pool="mean"
    )
    infer = dm.inference_module()
    for shape, free in (((3, 5, 4), dynamic_sizes != "none"), ((2, 7, 4), dynamic_sizes == "all")):
        x = torch.randn(*shape)
        if free:
            torch.testing.assert_close(infer(x), model(x))
        else:
            with pytest.raises(decouple.InputError, match="size"):
                infer(x)
    with pytest.raises(decouple.ConfigError, match="dynamic_sizes 'batches'.*'all', 'batch', 'none'"):
        decouple.convert(model, "scl", ["1"], (torch.randn(2, 5, 4),), tracer="export", dynamic_sizes="batches")


def test_fx_retries_with_the_failing_module_as_a_leaf() -> None:
    model = SameNet()
    x = torch.randn(2, 3, 17, 17)
    with pytest.warns(decouple.TracerFallbackWarning, match=r"SamePadConv \(failed in 'stem'\).*as a leaf"):
        dm = decouple.convert(model, "scl", ["stem", "block"], (x,))
    part = dm.program.partitions[True]
    assert part.trace.frontend == "fx"
    leaves = {n.target for n in part.trace.graph.nodes if n.op == "call_module"}
    assert {"stem", "block.0"} <= leaves  # both SamePadConv modules run as one call
    model.eval()
    dm.eval()
    other = torch.randn(3, 3, 21, 21)  # another size: the padding is computed when the leaf runs
    with torch.no_grad():
        torch.testing.assert_close(dm.inference_module()(other), model(other))
    assert _no_recording_classes(model)


def test_fx_does_not_make_a_leaf_of_a_container_of_blocks() -> None:
    model = nn.Sequential(SameNet())
    assert decouple.frontend.tracer._leaf_to_retry(model, _scope_error("0.stem", SamePadConv), []) is SamePadConv
    container = _scope_error("0", SameNet)  # SameNet holds blocks: export keeps the split points inside it
    assert decouple.frontend.tracer._leaf_to_retry(model, container, []) is None
    assert decouple.frontend.tracer._leaf_to_retry(model, container, [SameNet]) is None


def _scope_error(name: str, cls: type[nn.Module]) -> Any:
    from decouple.frontend.fx import FxTraceError

    return FxTraceError("failed", (name, cls))


def test_export_falls_back_to_static_sizes_on_a_shape_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.export.export
    calls: list[Any] = []

    def export(*args: Any, dynamic_shapes: Any = None, **kw: Any) -> Any:
        calls.append(dynamic_shapes)
        dims = [d for spec in (dynamic_shapes or {}).values() if spec for d in spec]
        if any(d != 0 for d in dims):  # a model whose sizes other than the batch cannot stay dynamic
            raise RuntimeError("The inequality, x/16 - 2*(((x/16)//2)) <= 0, cannot be solved")
        return real(*args, dynamic_shapes=dynamic_shapes, **kw)

    monkeypatch.setattr(torch.export, "export", export)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.warns(decouple.StaticSizesWarning, match="only the batch size dynamic"):
        dm = decouple.convert(model, "scl", ["1"], (torch.randn(2, 3, 8, 8),), tracer="export")
    assert len(calls) == 2  # dynamic, then batch only; nothing reads the mode: no eval-mode export
    model.eval()
    dm.eval()
    x = torch.randn(5, 3, 8, 8)  # another batch size still works
    with torch.no_grad():
        torch.testing.assert_close(dm(x), model(x))
    with pytest.raises(decouple.InputError, match="fixed dim 1 = 3, dim 2 = 8, dim 3 = 8"):
        dm(torch.randn(5, 3, 9, 9))


def test_export_pseudo_modules_never_reach_listings() -> None:
    model = SizeArithmetic()
    dm = decouple.convert(model, "scl", ["a"], (torch.randn(3, 6),), tracer="export")
    names = set(module_calls(dm.program.partitions[True].trace.graph))
    assert names == {"a", "b"}
    report = describe_conversion(dm)
    assert all(not m.startswith("_") for row in report.stages for m in row.modules)


@pytest.mark.parametrize(
    "build, x",
    [
        (lambda: torchvision.models.resnet18(num_classes=4), torch.randn(2, 3, 32, 32)),
        (lambda: torchvision.models.vit_b_16(image_size=32, num_classes=4), torch.randn(2, 3, 32, 32)),
        (ConstantScale, torch.randn(2, 4)),
    ],
)
def test_meta_propagation_matches_fake_tensors(build: Any, x: torch.Tensor) -> None:
    """Shapes and FLOPs from the meta-device run equal those of a FakeTensorMode run with FlopCounterMode."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from decouple.frontend import propagate as prop

    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = trace_modes(model, (x,), {})[True]
    assert all(
        n.meta["val"].device.type == "meta" for n in tr.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)
    )
    meta = {n.name: (tuple(n.meta["val"].shape), n.meta.get("flops", 0)) for n in tr.graph.nodes
            if isinstance(n.meta.get("val"), torch.Tensor)}  # fmt: skip
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, FlopCounterMode(display=False) as counter:
        prop._Propagator(tr.graph_module, counter).run(mode.from_tensor(x))
    fake = {n.name: (tuple(n.meta["val"].shape), n.meta.get("flops", 0)) for n in tr.graph.nodes
            if isinstance(n.meta.get("val"), torch.Tensor)}  # fmt: skip
    assert meta == fake


class Funnel(nn.Module):
    """Stride-2 convolutions down to a 1x1 map: a smaller image fails, so height and width stay pinned."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(nn.Conv2d(3 if i == 0 else 4, 4, 2, stride=2) for i in range(3)))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x).flatten(1))


def test_two_pinned_sizes_leave_the_batch_size_free() -> None:
    model = Funnel()
    dm = decouple.convert(model, "scl", ["convs.0"], (torch.randn(2, 3, 8, 8),), tracer="export", num_classes=3)
    x = torch.randn(5, 3, 8, 8)
    model.eval()
    dm.eval()
    with torch.no_grad():
        torch.testing.assert_close(dm.inference_module()(x), model(x))  # another batch size runs
    with pytest.raises(decouple.InputError, match="dim 2 = 8"):
        dm.inference_module()(torch.randn(5, 3, 7, 8))
