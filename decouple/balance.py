"""Balanced split points for ``convert(splits=N)``, counting each cut's local head in the stage it ends.

Why the heads: a stage trains its component *and* the local objective at its end (stage 0
carries its projection head and SupCon), so balancing components alone leaves the stages with
big heads slow, worst for cheap early components. Costs come from a *fine* compile: the method's
own passes run with a cut at every candidate point, so each fine segment has its component and
its head, for any method. Each is measured on the example inputs with synthetic class labels:
training FLOPs (forward + backward, ``torch.utils.flop_counter``), parameters, or wall time.
The global RNG, the model's buffers and its gradients are left as they were.

Index letters: ``m`` fine segments, ``i`` a fine segment (it ends at candidate cut ``i``), ``j`` a stage.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .codegen.stage import Stage
from .codegen.stages import build_stages
from .compiler.candidates import candidates_for_stages
from .compiler.cuts import Balance, Segment, choose_cuts, stage_costs
from .compiler.partition import partition
from .compiler.program import Program, StageSpec
from .compiler.splits import resolve_splits
from .errors import ConfigError, SplitError
from .frontend.preserve import preserved_state
from .frontend.trace import Trace
from .objectives.losses import logits_of
from .param_counts import count
from .passes.compile import run_passes
from .passes.registry import Method
from .tree import detach_tree, map_tensors, move_tree, tensor_leaves

__all__ = ["BalanceKind", "BALANCE_KINDS", "check_kind", "balance_splits"]

BalanceKind = Literal["flops", "params", "time"]
BALANCE_KINDS: tuple[str, ...] = ("flops", "params", "time")
_TIME_REPEATS = 3


def check_kind(kind: Any) -> BalanceKind:
    if kind not in BALANCE_KINDS:
        raise ConfigError(f"unknown balance {kind!r}; use one of {list(BALANCE_KINDS)} (it applies to splits=N)")
    return kind


def balance_splits(
    tr: Trace,
    root: nn.Module,
    num_stages: int,
    *,
    kind: BalanceKind,
    method: Method,
    options: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    num_classes: int | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    eval_trace: Trace | None = None,
) -> Balance:
    """Pick ``num_stages - 1`` candidate splits that balance training cost, local heads included.

    ``eval_trace``: the eval-mode trace when it differs from ``tr`` (no two candidates may cut it at one place).
    """
    candidates = candidates_for_stages(tr, root, num_stages, None if eval_trace is tr else eval_trace)
    names = [c.name for c in candidates]
    device = next((p.device for p in root.parameters()), torch.device("cpu"))
    with preserved_state(root, grads=True):
        program = _fine_program(tr, root, names, method, options, loss_fn, num_classes, device)
        stages = build_stages(program)
        message = move_tree(tr.inputs.bind(args, kwargs), device)
        labels = _labels(program, message, device)
        segments = _measure(stages, program, message, labels, kind)
    # a method may drop trailing parts of the model from training (associated learning replaces the
    # head): then there are fewer trained segments than candidates, and cuts come from those
    if len(segments) < num_stages:
        raise SplitError(
            f"splits={num_stages}: method {method.name!r} trains only {len(segments)} segments between the candidate "
            f"split points ({', '.join(names)}); ask for fewer stages or give module names explicitly"
        )
    cuts = choose_cuts(segments, num_stages)
    costs = stage_costs(segments, cuts)
    total = sum(costs) or 1.0
    return Balance(kind, [names[i] for i in cuts], [c / total for c in costs])


def _fine_program(
    tr: Trace, root: nn.Module, names: list[str], method: Method, options: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor], num_classes: int | None, device: torch.device,
) -> Program:  # fmt: skip
    """The program with a cut at every candidate, compiled by the method's passes (train mode only)."""
    part = partition(tr, resolve_splits(tr, names, root), root)
    specs = [StageSpec(index=k, plans={True: p, False: p}, device=device) for k, p in enumerate(part.stages)]
    program = Program(method=method.name, root=root, partitions={True: part, False: part}, stages=specs,
                      options=options, loss_fn=loss_fn, num_classes=num_classes)  # fmt: skip
    run_passes(program, method, options)
    return program


def _labels(program: Program, message: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Synthetic class labels for the example batch: every class in turn."""
    out = logits_of(program.output_value())
    classes = program.num_classes or (int(out.shape[1]) if out is not None and out.dim() == 2 else 2)
    sizes = [x.shape[0] for x in tensor_leaves(message) if x.dim() > 0]
    return torch.arange(sizes[0] if sizes else 2, device=device) % max(classes, 2)


def _measure(
    stages: list[Stage], program: Program, message: dict[str, Any], labels: torch.Tensor, kind: BalanceKind
) -> list[Segment]:
    if kind == "params":
        return [
            Segment(None, float(count(s.module.parameters())), float(count(s.affiliated_parameters()))) for s in stages
        ]
    if kind == "flops":
        traced = _traced_flops(program)
        runs = [_run_once(stages, message, labels, _flops, components=traced is None)]
        if traced is not None:
            runs = [[(c, head) for c, (_, head) in zip(traced, runs[0])]]
    else:
        runs = [_run_once(stages, message, labels, _seconds, components=True) for _ in range(1 + _TIME_REPEATS)][1:]
    return [
        Segment(None, statistics.median(r[i][0] for r in runs), statistics.median(r[i][1] for r in runs))
        for i in range(len(stages))
    ]


def _traced_flops(program: Program) -> list[float] | None:
    """Training FLOPs of each fine component from shape propagation: forward x 3 (backward is about twice
    the forward); ``None`` when no node has a FLOP count (then they are measured)."""
    part = program.partitions[True]
    nodes = part.trace.nodes
    flops = [3.0 * sum(float(nodes[x].meta.get("flops", 0)) for x in plan.nodes) for plan in part.stages]
    return flops if sum(flops) > 0 else None


def _run_once(
    stages: list[Stage], message: dict[str, Any], carry: Any, meter: type[_flops] | type[_seconds], *, components: bool
) -> list[tuple[float, float]]:
    """``(component, head)`` cost of each fine stage for one training pass over the example batch.

    With ``components=False`` only the heads are measured (components run without autograd, cost 0).
    """
    costs = []
    for k, stage in enumerate(stages):
        message, carry = move_tree(message, stage.device), move_tree(carry, stage.device)
        # without components, nothing of the forward is measured: no meter (FlopCounterMode's module
        # tracker fails on views of parameters made under no_grad, such as an expanded class token)
        with meter() if components else nullcontext(_Value()) as fwd, nullcontext() if components else torch.no_grad():
            next_message, output = stage(message)
        head = 0.0
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        if stage.objective is not None and k < len(stages) - 1:
            detached = map_tensors(lambda x: x.detach().requires_grad_(x.is_floating_point()), output)
            with meter() as local:
                result = stage.evaluate(message, next_message, detached, carry)
                assert result is not None
                if result.loss.requires_grad:
                    result.loss.backward()
            head = local.value
            carry = result.carry
            pairs = [
                (o, d.grad)
                for o, d in zip(tensor_leaves(output), tensor_leaves(detached))
                if d.grad is not None and o.requires_grad
            ]
        elif components:  # the last stage (its task loss is the same wherever the cuts fall) or no objective
            pairs = [(o, torch.ones_like(o)) for o in tensor_leaves(output) if o.requires_grad]
        with meter() as bwd:
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        costs.append((fwd.value + bwd.value if components else 0.0, head))
        message = detach_tree(next_message)
    return costs


class _Value:
    value = 0.0


class _flops:
    """Counts the FLOPs run inside the block (forward and backward ops alike)."""

    def __enter__(self) -> _Value:
        self.result = _Value()
        self.mode = FlopCounterMode(display=False)
        self.mode.__enter__()
        return self.result

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)
        self.result.value = float(self.mode.get_total_flops())


class _seconds:
    """Wall time of the block (synchronising CUDA so device work is included)."""

    def __enter__(self) -> _Value:
        self.result = _Value()
        _sync()
        self.start = time.perf_counter()
        return self.result

    def __exit__(self, *exc: Any) -> None:
        _sync()
        self.result.value = time.perf_counter() - self.start


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
