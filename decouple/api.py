"""The public API: :func:`convert` compiles a model into a :class:`~decouple.model.DecoupledModel`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .balance import balance_splits
from .balance import check_kind as check_balance
from .codegen.stage import Stage
from .codegen.stages import build_stages
from .compiler.cuts import Balance
from .compiler.partition import Partition, partition
from .compiler.program import Program, StageSpec
from .compiler.splits import resolve_splits
from .errors import ConfigError
from .frontend.inputs import normalize_example_inputs
from .frontend.preserve import copy_module
from .frontend.trace import Trace, TracerName
from .frontend.tracer import trace_modes
from .model import DecoupledModel
from .objectives.losses import default_task_loss
from .passes import Method, ObjectiveFactory, method_options, resolve_method, run_passes
from .runtime.config import SchedulerFactory, TrainingConfig
from .runtime.prepare import prepare_stages

__all__ = ["convert", "OptimizerFactory"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def convert(
    model: nn.Module,
    method: str | Method | ObjectiveFactory = "scl",
    splits: Sequence[str] | int | None = None,
    example_inputs: Any = None,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    optimizer: OptimizerFactory | None = None,
    devices: Sequence[str | torch.device] | str | torch.device | None = None,
    num_classes: int | None = None,
    tracer: TracerName = "auto",
    dynamic_sizes: str = "all",
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    autowrap_functions: Iterable[Callable[..., Any]] = (),
    copy_model: bool = True,
    balance: str = "flops",
    on_nonfinite: str = "raise",
    scheduler: SchedulerFactory | None = None,
    scheduler_interval: str = "step",
    precision: str | int = "32",
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    accumulate: int = 1,
    compile: bool | dict[str, Any] = False,
    **options: Any,
) -> DecoupledModel:
    """Compile ``model`` into stages trained with local objectives.

    Args:
        model: any ``nn.Module``; it is never modified (it is deep-copied unless ``copy_model=False``,
            in which case the stages share and train its parameters in place).
        method: a registered method's name ("scl", "al", "early_exit", "bp", "dgl", "predsim",
            "infopro", "deinfo"; ``decouple.METHODS``), or your own ``make_objective(info:
            decouple.StageInfo) -> decouple.LocalObjective | None``, called for every stage but
            the last (which trains ``loss_fn``); see :func:`decouple.register_method`.
        splits: module qualified names (or fx node names) to cut right after, in forward order;
            an int ``N`` asks for ``N`` stages balanced by cost.
        example_inputs: a tuple of example positional inputs, or a dict of keyword inputs, used to
            trace the model and size the local heads. Arguments not given are fixed to their defaults.
        loss_fn: ``loss_fn(output, target)`` for the last stage, called with exactly what the model
            returns (default: cross-entropy on a logits tensor).
        optimizer: ``params -> torch.optim.Optimizer``, called once per stage (default Adam, lr 1e-3).
        devices: a device per stage, or fewer devices given to contiguous runs of stages.
        num_classes: needed by "al" and "early_exit" when the output is not ``(batch, classes)``.
        tracer: "auto" (fx, falling back to torch.export), "fx" or "export".
        dynamic_sizes: which input sizes a torch.export trace keeps dynamic: "all" (default), "batch"
            or "none"; the others are fixed to the example's and checked on entry. Fewer dynamic sizes
            export faster where the model's size arithmetic is heavy (a chunked scan over the sequence).
        leaf_modules, autowrap_functions: passed to the fx tracer; leaf modules run as one call.
        balance: with ``splits=N``, what the stages balance, local heads included: "flops" (training
            FLOPs), "params", or "time" (wall time on the example inputs: give a realistic batch).
        on_nonfinite: a stage whose local loss is NaN or infinite "raise"s a ``StageError`` naming
            the stage and batch, or "skip"s that update (counted in ``Stage.skipped_steps``).
        scheduler: ``optimizer -> LR scheduler``, called once per stage with its optimizer; stepped after
            every optimizer step (``scheduler_interval="step"``) or every epoch of ``fit`` (``"epoch"``).
        precision: "32" (default), "bf16" (bfloat16 autocast, CPU or GPU) or "fp16" (float16 autocast
            with a gradient scaler per stage, CUDA); local losses reduce in fp32 either way.
        clip_grad_norm, clip_grad_value: per stage, over its module and head parameters, after unscaling.
        accumulate: each stage sums ``accumulate`` batches' gradients (loss / accumulate) and steps on
            the last; ``fit`` steps a last partial group at the end of each epoch.
        compile: ``torch.compile`` each stage's module and objective (``True``, or its keyword arguments);
            a stage whose compilation fails warns once and trains eagerly.
        **options: options of the method (e.g. ``temperature``, ``head``, ``pool`` for "scl").
    """
    chosen = resolve_method(method)
    opts = method_options(chosen, options)
    balance_kind = check_balance(balance)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert() takes an nn.Module, got {type(model).__name__}")
    if optimizer is not None and isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            "optimizer must be a factory, not an optimizer instance: each stage builds its own, e.g. "
            "optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(f"loss_fn must be callable as loss_fn(output, target), got {type(loss_fn).__name__}")
    if on_nonfinite not in ("raise", "skip"):
        raise ConfigError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    config = TrainingConfig.create(
        scheduler=scheduler,
        scheduler_interval=scheduler_interval,
        precision=precision,
        clip_grad_norm=clip_grad_norm,
        clip_grad_value=clip_grad_value,
        accumulate=accumulate,
        compile=compile,
    )
    args, kwargs = normalize_example_inputs(example_inputs)
    root = copy_module(model) if copy_model else model

    traces = trace_modes(
        root, args, kwargs, tracer=tracer, leaf_modules=leaf_modules, autowrap_functions=autowrap_functions,
        dynamic_sizes=dynamic_sizes,
    )  # fmt: skip

    if splits is None:
        raise ConfigError(
            "splits is required: a list of module names to cut after (e.g. ['layer1', 'layer2']) or a number of stages"
        )
    balanced: Balance | None = None
    if isinstance(splits, int) and not isinstance(splits, bool):
        balanced = balance_splits(
            traces[True],
            root,
            splits,
            kind=balance_kind,
            method=chosen,
            options=opts,
            loss_fn=loss_fn or default_task_loss,
            num_classes=num_classes,
            args=args,
            kwargs=kwargs,
            eval_trace=traces[False],
        )
        names: Sequence[str] = balanced.splits
    else:
        if isinstance(splits, bool):
            raise ConfigError(
                f"splits={splits!r}: give module names to cut after, e.g. splits=['layer1'], or a number of stages"
            )
        if balance != "flops":
            raise ConfigError(
                f"balance={balance!r} chooses split points for splits=N; with explicit splits leave it out"
            )
        names = splits
    partitions = {True: _partition(traces[True], names, root)}
    same = traces[False] is traces[True]
    partitions[False] = partitions[True] if same else _partition(traces[False], names, root)

    num_stages = partitions[True].num_stages
    kept = num_stages - 1 if chosen.replaces_head else num_stages  # a replaced head does not train
    placement = _assign_devices(devices, max(kept, 1), root, dropped=num_stages - kept)
    specs = [
        StageSpec(
            index=k,
            plans={True: partitions[True].stages[k], False: partitions[False].stages[k]},
            device=placement[min(k, len(placement) - 1)],
        )
        for k in range(num_stages)
    ]
    program = Program(
        method=chosen.name,
        root=root,
        partitions=partitions,
        stages=specs,
        options=opts,
        loss_fn=loss_fn or default_task_loss,
        num_classes=num_classes,
    )
    run_passes(program, chosen, opts)
    stages = build_stages(program)
    factory = optimizer or _default_optimizer
    for stage in stages:
        stage.optimizer = _make_optimizer(factory, stage)
        stage.on_nonfinite = on_nonfinite
    prepare_stages(stages, config)
    dm = DecoupledModel(program, stages)
    dm.training_config = config
    dm.balance = balanced
    dm.train(model.training)
    return dm


def _partition(tr: Trace, names: Sequence[str], root: nn.Module) -> Partition:
    return partition(tr, resolve_splits(tr, names, root), root)


def _assign_devices(devices: Any, num_stages: int, root: nn.Module, *, dropped: int = 0) -> list[torch.device]:
    if devices is None:
        first = next(iter(root.parameters()), None)
        return [first.device if first is not None else torch.device("cpu")] * num_stages
    if isinstance(devices, (str, torch.device)):
        devices = [devices]
    try:
        parsed = [torch.device(d) for d in devices]
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"devices must be device names like 'cpu' or 'cuda:0': {exc}") from exc
    if not parsed:
        raise ConfigError("devices is empty; give at least one device, or leave it out")
    if len(parsed) > num_stages:
        why = f" (the method replaces the {dropped} stage(s) after the last split)" if dropped else ""
        raise ConfigError(
            f"{len(parsed)} devices for {num_stages} stages{why}: give at most one device per stage (or add splits)"
        )
    for d in parsed:
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise ConfigError(
                f"device {d} is not available here (CUDA available: {torch.cuda.is_available()}, "
                f"devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0}); use 'cpu' entries to run on CPU"
            )
    return [parsed[k * len(parsed) // num_stages] for k in range(num_stages)]


def _make_optimizer(factory: OptimizerFactory, stage: Stage) -> torch.optim.Optimizer | None:
    params = [p for p in stage.parameters() if p.requires_grad]
    if not params:
        return None
    try:
        opt = factory(params)
    except Exception as exc:
        raise ConfigError(
            f"the optimizer factory failed for stage {stage.index}: {type(exc).__name__}: {exc}. It is called as "
            "optimizer(params); e.g. optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
        ) from exc
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError(f"the optimizer factory returned {type(opt).__name__}, expected a torch.optim.Optimizer")
    return opt
