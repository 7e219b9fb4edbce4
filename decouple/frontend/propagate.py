"""Shape propagation: every node's example value (a fake tensor) and its FLOPs, without running the model.

The graph runs under ``FakeTensorMode`` (no compute, no memory for activations) with a FLOP
counter; an operator without a fake implementation falls back to a real run without gradients.
Buffers and the RNG are restored either way, so analysis never changes the model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ..errors import TraceError
from .preserve import preserved_state
from .trace import Trace

__all__ = ["propagate"]


class _Propagator(fx.Interpreter):
    """Records each node's example value (``meta["val"]``) and FLOPs (``meta["flops"]``)."""

    def __init__(self, gm: fx.GraphModule, counter: Any = None) -> None:
        super().__init__(gm)
        self.counter = counter

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops() if self.counter is not None else 0
        result = super().run_node(n)
        n.meta["val"] = _to_meta(result)
        if self.counter is not None:
            n.meta["flops"] = int(self.counter.get_total_flops() - before)
        return result


def _to_meta(value: Any) -> Any:
    """Keep shapes and dtypes of tensors without their data."""

    def convert(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and not _is_fake(x):
            return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta", requires_grad=x.requires_grad)
        return x

    return pytree.tree_map(convert, value)


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
    try:
        with preserved_state(gm), torch.no_grad():
            _Propagator(gm).run(*ordered)
    except Exception as exc:
        raise TraceError(
            f"the traced graph of {tr.graph_module.__class__.__name__} fails on example_inputs: "
            f"{type(exc).__name__}: {exc}. Check that example_inputs are valid inputs of the model."
        ) from exc
