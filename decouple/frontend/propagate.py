"""Shape propagation: every node's example value (a meta or fake tensor) and its FLOPs, without running the model.

The graph first runs on the meta device (parameters, buffers and constants swapped for meta
copies: no compute, no memory, nothing of the model touched), with a FLOP counter. Operators
without a meta kernel, or that read data (``.item()``), fail there; the graph then runs under
``FakeTensorMode``, and where that fails too, for real without gradients. Buffers and the RNG are
restored either way, so analysis never changes the model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ..errors import TraceError
from .meta_run import run_on_meta
from .preserve import preserved_state
from .trace import Trace

__all__ = ["propagate"]


#: modules and ops whose output has their input's shape, dtype and layout, and whose FLOPs count as 0:
#: their values are not computed (on the meta device batch norm runs a Python decomposition that
#: costs more than the rest of a ResNet)
_SAME_SHAPE_TYPES: set[type[nn.Module]] = {
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity,
}  # fmt: skip
_SAME_SHAPE_OPS = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "dropout", "relu", "relu_", "gelu"}


class _Propagator(fx.Interpreter):
    """Records each node's example value (``meta["val"]``) and FLOPs (``meta["flops"]``)."""

    def __init__(self, gm: fx.GraphModule, counter: Any = None) -> None:
        super().__init__(gm)
        self.counter = counter

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops() if self.counter is not None else 0
        shortcut = _same_shape(self, n)
        result = shortcut if shortcut is not None else super().run_node(n)
        n.meta["val"] = _to_meta(result)
        if self.counter is not None:
            n.meta["flops"] = int(self.counter.get_total_flops() - before)
        return result


def _same_shape(interpreter: fx.Interpreter, n: fx.Node) -> torch.Tensor | None:
    """An empty tensor like ``n``'s input when ``n`` is a shape-preserving module or op on the meta device."""
    if not n.args or not isinstance(n.args[0], fx.Node):
        return None
    if n.op == "call_module":
        same = type(interpreter.module.get_submodule(str(n.target))) in _SAME_SHAPE_TYPES
    elif n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
        same = n.target._schema.name.split("::")[-1] in _SAME_SHAPE_OPS
    else:
        return None
    x = interpreter.env.get(n.args[0])
    if not same or not isinstance(x, torch.Tensor) or x.device.type != "meta" or not x.is_floating_point():
        return None
    return torch.empty_like(x).requires_grad_(x.requires_grad)


class _FlopCount(TorchDispatchMode):
    """FLOPs of the ops that have a formula in ``torch.utils.flop_counter`` (matmuls, convolutions, attention).

    Unlike ``FlopCounterMode`` it never decomposes other ops to look for counted ones inside them
    (batch norm's Python decomposition costs more than the rest of a ResNet on the meta device), so
    it suits the meta run, where composite ops reach it already decomposed by the dispatcher.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def get_total_flops(self) -> int:
        return self.total

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(getattr(func, "_overloadpacket", None))
        if formula is not None:
            self.total += int(formula(*args, **(kwargs or {}), out_val=out))
        return out


def _to_meta(value: Any) -> Any:
    """Keep shapes and dtypes of tensors without their data."""
    if isinstance(value, torch.Tensor):
        return _tensor_to_meta(value)  # most nodes: no tree to walk
    return pytree.tree_map(_tensor_to_meta, value)


def _tensor_to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and not _is_fake(x):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta", requires_grad=x.requires_grad)
    return x


def _is_fake(x: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(x, FakeTensor)


def propagate(tr: Trace, values: dict[str, Any]) -> None:
    """Annotate every node of ``tr`` with ``meta["val"]`` (and ``meta["flops"]``) on fake example inputs.

    Runs with fake tensors (no compute, no memory for activations); falls back to a real
    run without gradients when an operator has no fake implementation. Buffers and the RNG
    are restored either way, so analysis never changes the model.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    gm = tr.graph_module
    ordered = [values[n.name] for n in gm.graph.nodes if n.op == "placeholder" and n.name in values]
    try:
        with torch.random.fork_rng(devices=[]), _FlopCount() as counter:
            run_on_meta(gm, ordered, _Propagator(gm, counter).run)
        return
    except Exception:
        _clear(gm)
    try:
        with preserved_state(gm):
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            with mode:
                fake = [mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in ordered]
                counter = FlopCounterMode(display=False)
                with counter:
                    _Propagator(gm, counter).run(*fake)
        return
    except Exception:
        pass
    _clear(gm)
    try:
        with preserved_state(gm), torch.no_grad():
            _Propagator(gm).run(*ordered)
    except Exception as exc:
        raise TraceError(
            f"the traced graph of {tr.graph_module.__class__.__name__} fails on example_inputs: "
            f"{type(exc).__name__}: {exc}. Check that example_inputs are valid inputs of the model."
        ) from exc


def _clear(gm: fx.GraphModule) -> None:
    """Forget what a failed attempt recorded, so no node keeps a value from a run that did not finish."""
    for n in gm.graph.nodes:
        n.meta.pop("val", None)
        n.meta.pop("flops", None)
