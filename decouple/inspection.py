"""What a conversion will do, as data: per-stage rows (``decouple inspect``) and candidate cuts (``decouple splits``).

The records are dataclasses with ``as_dict()``, so the command line prints them as tables or
JSON and Python code can use them directly. Parameter counts come from
``DecoupledModel.param_counts()`` unchanged; boundaries from each stage's ``io`` (example shapes);
FLOPs from shape propagation on the example inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .balance import BalanceKind, balance_splits
from .codegen.stages import describe_value
from .compiler.candidates import Candidate, candidate_splits
from .frontend.inputs import normalize_example_inputs
from .frontend.trace import Trace, TracerName
from .frontend.tracer import trace_modes
from .model import DecoupledModel
from .objectives.losses import default_task_loss
from .passes.registry import METHODS, Method, ObjectiveFactory, method_options, resolve_method

__all__ = [
    "Boundary",
    "StageRow",
    "ConversionReport",
    "SplitsReport",
    "describe_conversion",
    "describe_splits",
    "trace_model",
    "trace_models",
]


@dataclass
class Boundary:
    """A value a stage reads or hands on: a tensor's ``shape`` and ``dtype``, or a plain ``value``.

    ``carried``: the stage passes it through unchanged (a skip connection or mask crossing it).
    """

    name: str
    shape: list[int] | None = None
    dtype: str | None = None
    value: Any = None
    carried: bool = False

    @classmethod
    def of(cls, name: str, described: Any, carried: bool = False) -> Boundary:
        """From :func:`decouple.codegen.stages.describe_value` output."""
        if _is_tensor_description(described):
            return cls(name, list(described[0]), described[1], None, carried)
        return cls(name, None, None, _jsonable(described), carried)

    def __str__(self) -> str:
        if self.shape is None:
            text = f"{self.name} = {self.value!r}"
        else:
            dtype = "" if self.dtype == "float32" else f" {self.dtype}"
            text = f"{self.name} {tuple(self.shape)}{dtype}"
        return text + (" (carried)" if self.carried else "")


def _is_tensor_description(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple) and isinstance(value[1], str)


def _jsonable(value: Any) -> Any:
    if _is_tensor_description(value):
        return {"shape": list(value[0]), "dtype": value[1]}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


@dataclass
class StageRow:
    """One stage: modules it covers, its boundary values, parameters and share of forward FLOPs."""

    index: int
    modules: list[str]
    inputs: list[Boundary]
    outputs: list[Boundary]
    representation: str | None
    effective: int
    affiliated: int
    training: int
    device: str
    flops: int
    flops_share: float | None
    cost_share: float | None = None
    objective: str | None = None  # what the stage learns from: its objective's class and settings


@dataclass
class ConversionReport:
    """Every stage of a conversion, and parameter totals: training vs inference vs the original model."""

    model: str
    method: str
    splits: list[str]
    stages: list[StageRow]
    original: int
    inference: int
    training: int
    effective: int
    affiliated: int
    dropped: int
    notes: list[str] = field(default_factory=list)
    method_summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_conversion(dm: DecoupledModel) -> ConversionReport:
    """The report of a :class:`~decouple.DecoupledModel` (``decouple inspect`` prints it)."""
    counts = dm.param_counts()
    part = dm.program.partitions[True]
    flops = {n.name: int(n.meta.get("flops", 0)) for n in part.trace.graph.nodes}
    total_flops = sum(flops.values())
    rows = []
    for stage, row in zip(dm.stages, counts.stages):
        io = stage.io[True]
        plan = dm.program.stages[stage.index].plan
        inputs = [Boundary.of(name, io.shapes.get(name)) for name in io.inputs]
        if io.last:
            outputs = [Boundary.of("output", describe_value(dm.program.output_value()))]
        else:
            outputs = [
                Boundary.of(name, io.shapes.get(name), carried=name not in io.outputs) for name in io.message_out
            ]
        stage_flops = sum(flops.get(name, 0) for name in plan.nodes)
        rows.append(
            StageRow(
                index=row.index,
                modules=list(row.modules),
                inputs=inputs,
                outputs=outputs,
                representation=io.representation,
                effective=row.effective,
                affiliated=row.affiliated,
                training=row.training,
                device=row.device,
                flops=stage_flops,
                flops_share=stage_flops / total_flops if total_flops else None,
                cost_share=row.cost_share,
                objective=_describe_objective(stage.objective),
            )
        )
    return ConversionReport(
        model=type(dm.program.root).__name__,
        method=counts.method,
        splits=[point.spec for point in part.splits],
        stages=rows,
        original=counts.original,
        inference=counts.inference,
        training=counts.training,
        effective=counts.effective,
        affiliated=counts.affiliated,
        dropped=counts.dropped,
        notes=list(counts.notes),
        method_summary=METHODS[dm.method].summary if dm.method in METHODS else "",
    )


def _describe_objective(objective: nn.Module | None) -> str | None:
    """``"SupConObjective(temperature=0.1, ...)"``: the class and its ``extra_repr``."""
    if objective is None:
        return None
    settings = objective.extra_repr()
    return f"{type(objective).__name__}({settings})" if settings else type(objective).__name__


@dataclass
class SplitsReport:
    """Candidate split points in forward order and, for ``stages``, the balanced choice among them.

    The choice is the one ``convert(model, method, splits=stages, balance=balance)`` makes: the same
    chooser over the same costs, each stage's local head included. ``stage_shares``: each suggested
    stage's share of that cost.
    """

    model: str
    candidates: list[Candidate]
    stages: int | None = None
    suggested: list[str] | None = None
    stage_shares: list[float] | None = None
    method: str | None = None
    balance: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for c in data["candidates"]:
            c["aliases"], c["shape"], c["crossing"] = list(c["aliases"]), list(c["shape"]), list(c["crossing"])
        return data


def trace_model(
    model: nn.Module,
    example_inputs: Any,
    *,
    tracer: TracerName = "auto",
    leaf_modules: Iterable[Any] = (),
    autowrap_functions: Iterable[Callable[..., Any]] = (),
    modes: tuple[bool, ...] = (True,),
) -> Trace:
    """The training-mode trace of ``model`` with shapes and FLOPs, as ``convert`` makes it."""
    return trace_models(
        model, example_inputs, tracer=tracer, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions,
        modes=modes,
    )[True]  # fmt: skip


def trace_models(
    model: nn.Module,
    example_inputs: Any,
    *,
    tracer: TracerName = "auto",
    leaf_modules: Iterable[Any] = (),
    autowrap_functions: Iterable[Callable[..., Any]] = (),
    modes: tuple[bool, ...] = (True, False),
    dynamic_sizes: str = "all",
) -> dict[bool, Trace]:
    """The trace of ``model`` per training mode (one object when the modes trace alike), as ``convert`` makes them."""
    args, kwargs = normalize_example_inputs(example_inputs)
    return trace_modes(
        model, args, kwargs, tracer=tracer, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions,
        modes=modes, dynamic_sizes=dynamic_sizes,
    )  # fmt: skip


def describe_splits(
    model: nn.Module,
    tr: Trace,
    stages: int | None = None,
    *,
    example_inputs: Any = None,
    method: str | Method | ObjectiveFactory = "scl",
    balance: BalanceKind = "flops",
    num_classes: int | None = None,
    options: dict[str, Any] | None = None,
    eval_trace: Trace | None = None,
) -> SplitsReport:
    """Candidate split points of a traced model and, with ``stages``, the ones ``convert(..., splits=stages)`` picks.

    Single-tensor points first, then multi-tensor points (``Candidate.crossing`` names the other
    tensors). ``eval_trace``: the eval-mode trace, as ``convert`` sees it (``trace_models``).
    """
    other = None if eval_trace is tr else eval_trace
    candidates = candidate_splits(tr, model, other=other, several=True)
    report = SplitsReport(type(model).__name__, candidates)
    if stages is not None:
        chosen = resolve_method(method)
        args, kwargs = normalize_example_inputs(example_inputs)
        result = balance_splits(tr, model, stages, kind=balance, method=chosen, options=method_options(chosen, options or {}),
                                loss_fn=default_task_loss, num_classes=num_classes, args=args, kwargs=kwargs,
                                eval_trace=other)  # fmt: skip
        report.stages, report.suggested, report.stage_shares = stages, result.splits, result.shares
        report.method, report.balance = chosen.name, balance
    return report
