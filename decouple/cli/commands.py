"""The commands that look at a conversion before training: ``inspect``, ``splits`` and ``export``."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

import torch

from ..errors import ConfigError
from ..inspection import describe_conversion, describe_splits, trace_models
from ..passes.registry import parse_options
from ..runtime.state import MODEL_FORMATS
from ..standalone import export_source
from .arguments import (
    add_conversion_arguments,
    add_json_argument,
    add_method_arguments,
    add_model_arguments,
    build,
    convert_from_args,
    example_input,
    method_from_args,
    print_json,
)
from .main import Command, register_command
from .tables import console, conversion_tables, export_table, splits_tables

__all__ = ["run_inspect", "run_splits", "run_export"]


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_conversion_arguments(parser)
    add_json_argument(parser)


def run_inspect(args: argparse.Namespace) -> int:
    dm, x = convert_from_args(args)
    report = describe_conversion(dm)
    if args.json:
        print_json(
            {
                "model_spec": args.model,
                "input_shape": list(x.shape),
                "input_dtype": str(x.dtype).replace("torch.", ""),
                **report.as_dict(),
            }
        )
        return 0
    out = console()
    out.print(f"{args.model} · example input {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}")
    for item in conversion_tables(report):
        out.print(item)
    return 0


def _splits_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_method_arguments(parser)
    parser.add_argument(
        "--stages",
        type=int,
        metavar="N",
        help="also suggest the N-1 split points convert(..., splits=N) picks for --method (local heads counted)",
    )
    add_json_argument(parser)


def run_splits(args: argparse.Namespace) -> int:
    model = build(args)
    x = example_input(args)
    traces = trace_models(
        model, (x,), tracer=args.tracer, leaf_modules=args.leaf_module, dynamic_sizes=args.dynamic_sizes
    )
    report = describe_splits(model, traces[True], args.stages, example_inputs=(x,), method=method_from_args(args),
                             balance=args.balance, num_classes=args.num_classes, options=parse_options(args.option),
                             eval_trace=traces[False])  # fmt: skip
    if args.json:
        print_json({"model_spec": args.model, "input_shape": list(x.shape), **report.as_dict()})
        return 0
    out = console()
    for item in splits_tables(report):
        out.print(item)
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_conversion_arguments(parser)
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder to write the source files, weights and manifest.json to"
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a DecoupledModel.state_dict() saved with torch.save, to export trained weights",
    )
    add_json_argument(parser)


def run_export(args: argparse.Namespace) -> int:
    dm, x = convert_from_args(args)
    if args.checkpoint:
        dm.load_state_dict(_read_checkpoint(args.checkpoint))
    result = export_source(dm, args.out, example_inputs=(x,))
    if args.json:
        print_json(asdict(result))
        return 0
    out = console()
    out.print(export_table(result))
    out.print(
        f"checked: the exported inference module reproduces the original on the example input (max abs diff {result.max_abs_diff:.3g})"
    )
    out.print(
        f"use it with only torch: import sys; sys.path.insert(0, {args.out!r}); import inference; model = inference.load()"
    )
    return 0


def _read_checkpoint(path: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"--checkpoint {path!r} does not exist; save one with torch.save(dm.state_dict(), path)"
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"--checkpoint {path!r} is not a readable torch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") not in MODEL_FORMATS:
        raise ConfigError(
            f"--checkpoint {path!r} is not a DecoupledModel.state_dict(); save one with torch.save(dm.state_dict(), path)"
        )
    return state


register_command(Command("inspect", "show the stages, boundaries and parameter counts of a conversion", _inspect_arguments, run_inspect,
                         "Convert MODEL and print one row per stage: modules, boundary values with shapes, effective and "
                         "affiliated parameters, FLOPs share; then training vs inference vs original parameter totals."))  # fmt: skip
register_command(Command("splits", "list candidate split points (one tensor crossing) with their cost shares", _splits_arguments, run_splits,
                         "List the module calls after which exactly one tensor crosses, in forward order, with the "
                         "cumulative share of parameters and FLOPs before each; --stages N suggests a balanced set."))  # fmt: skip
register_command(Command("export", "write the inference module and every stage as standalone Python source plus weights", _export_arguments, run_export,
                         "Convert MODEL and write inference.py, stage{k}.py and stage{k}_heads.py with .pt weights to --out: "
                         "readable Python that needs only torch (no decouple)."))  # fmt: skip
