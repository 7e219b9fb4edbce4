"""The ``decouple`` command line: a thin layer of subcommands over the Python API.

Subcommands live in a registry (:data:`COMMANDS`): a :class:`Command` names itself, adds its
arguments and runs; another module adds one with :func:`register_command` (e.g. ``demo``).
Errors for bad input (any :class:`~decouple.errors.DecoupleError`) print one line saying what is
wrong and how to fix it, and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .errors import ConfigError, DecoupleError, InputError

__all__ = ["Command", "COMMANDS", "register_command", "build_parser", "main", "add_model_arguments", "add_conversion_arguments"]

USAGE_ERROR = 2

_DTYPES = {
    "float": torch.float32, "float32": torch.float32, "double": torch.float64, "float64": torch.float64,
    "half": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "long": torch.int64, "int64": torch.int64, "int": torch.int32, "int32": torch.int32, "bool": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class Command:
    """A subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` returns the exit status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


COMMANDS: dict[str, Command] = {}


def register_command(command: Command) -> Command:
    """Add a subcommand to ``decouple`` (later registrations of the same name replace earlier ones)."""
    COMMANDS[command.name] = command
    return command


# ---------------------------------------------------------------------------------------------
# Shared arguments


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, its keyword arguments and the example input."""
    from .modelspec import SCHEMES

    schemes = ", ".join(f"{prefix}:NAME" for prefix in SCHEMES)
    parser.add_argument("model", metavar="MODEL", help=f"{schemes}, package.module:factory or file.py:factory")
    parser.add_argument("--kwargs", default="{}", metavar="JSON", help='keyword arguments of the model builder, e.g. \'{"num_classes": 10}\'')
    parser.add_argument("--input-shape", required=True, metavar="N,C,...", help="shape of a random example input, e.g. 2,3,32,32")
    parser.add_argument("--input-dtype", default="float", choices=sorted(_DTYPES), metavar="DTYPE",
                        help=f"dtype of the example input: {', '.join(sorted(_DTYPES))} (long for token ids)")
    parser.add_argument("--input-high", type=int, default=2, metavar="N", help="integer inputs are drawn from [0, N) (e.g. the vocabulary size)")
    parser.add_argument("--num-classes", type=int, metavar="N", help="number of classes: passed to the model builder (when it takes num_classes) and to convert()")
    parser.add_argument("--tracer", default="auto", choices=("auto", "fx", "export"), help="tracing frontend (default: fx, falling back to torch.export)")
    parser.add_argument("--leaf-module", action="append", default=[], metavar="NAME", help="qualified name of a module to keep as one opaque call (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model's initial weights and the example input")


def add_conversion_arguments(parser: argparse.ArgumentParser) -> None:
    """Method, split points and method options."""
    parser.add_argument("--method", default="scl", help="training method: scl (default), bp, and those registered (al, early_exit)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--splits", metavar="A,B,...", help="module names to cut after, in forward order (see `decouple splits`)")
    group.add_argument("--stages", type=int, metavar="N", help="N stages balanced by FLOPs among the candidate split points")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method option, value parsed as JSON when possible (repeatable), e.g. temperature=0.5")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")


# ---------------------------------------------------------------------------------------------
# Parsing values


def parse_shape(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.strip().strip("()[]").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise InputError(f"--input-shape must be comma-separated positive integers like 2,3,32,32; got {text!r}")
    return shape


def parse_json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}; quote it like '{{\"num_classes\": 10}}'") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object like '{{\"num_classes\": 10}}', got {text!r}")
    return value


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--option takes KEY=VALUE (e.g. temperature=0.5), got {item!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def parse_splits(args: argparse.Namespace) -> list[str] | int:
    if args.stages is not None:
        return int(args.stages)
    if args.splits is None:
        raise ConfigError("give --splits A,B,... (module names to cut after) or --stages N; `decouple splits MODEL --input-shape ...` lists the candidates")
    names = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"--splits names no module: {args.splits!r}; give module names like layer1,layer2")
    return names


def example_input(args: argparse.Namespace) -> torch.Tensor:
    """The random example input ``--input-shape`` / ``--input-dtype`` / ``--input-high`` describe."""
    shape = parse_shape(args.input_shape)
    dtype = _DTYPES[args.input_dtype]
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape).bool()
    if args.input_high < 1:
        raise InputError(f"--input-high must be at least 1, got {args.input_high}")
    return torch.randint(0, args.input_high, shape, dtype=dtype)


def build(args: argparse.Namespace) -> Any:
    """The model named on the command line (seeded)."""
    from .modelspec import accepts_keyword, build_model, parse_model_spec

    spec = parse_model_spec(args.model)
    kwargs = parse_json_object(args.kwargs, "--kwargs")
    if args.num_classes is not None:
        if args.num_classes < 1:
            raise ConfigError(f"--num-classes must be a positive integer, got {args.num_classes}")
        if "num_classes" not in kwargs and accepts_keyword(spec, "num_classes"):
            kwargs["num_classes"] = args.num_classes
    torch.manual_seed(args.seed)
    return build_model(spec, kwargs)


def convert_from_args(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    """Build, then convert the model as the arguments say; returns the DecoupledModel and the example input."""
    import decouple

    model = build(args)
    x = example_input(args)
    splits = parse_splits(args)
    options = parse_options(args.option)
    dm = decouple.convert(
        model, method=args.method, splits=splits, example_inputs=(x,), num_classes=args.num_classes,
        tracer=args.tracer, leaf_modules=args.leaf_module, **options,
    )  # fmt: skip
    return dm, x


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# ---------------------------------------------------------------------------------------------
# Commands


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_conversion_arguments(parser)
    _add_json(parser)


def run_inspect(args: argparse.Namespace) -> int:
    from .inspection import describe_conversion

    dm, x = convert_from_args(args)
    report = describe_conversion(dm)
    if args.json:
        _print_json({"model_spec": args.model, "input_shape": list(x.shape), "input_dtype": str(x.dtype).replace("torch.", ""), **report.as_dict()})
        return 0
    from .tables import console, conversion_tables

    out = console()
    out.print(f"{args.model} · example input {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}")
    for item in conversion_tables(report):
        out.print(item)
    return 0


def _splits_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--stages", type=int, metavar="N", help="also suggest N-1 split points balancing N stages by FLOPs")
    _add_json(parser)


def run_splits(args: argparse.Namespace) -> int:
    from .inspection import describe_splits, trace_model

    model = build(args)
    x = example_input(args)
    tr = trace_model(model, (x,), tracer=args.tracer, leaf_modules=args.leaf_module)
    report = describe_splits(model, tr, args.stages)
    if args.json:
        _print_json({"model_spec": args.model, "input_shape": list(x.shape), **report.as_dict()})
        return 0
    from .tables import console, splits_tables

    out = console()
    for item in splits_tables(report):
        out.print(item)
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_conversion_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the source files, weights and manifest.json to")
    parser.add_argument("--checkpoint", metavar="PATH", help="a DecoupledModel.state_dict() saved with torch.save, to export trained weights")
    _add_json(parser)


def run_export(args: argparse.Namespace) -> int:
    from .export_source import export_source

    dm, x = convert_from_args(args)
    if args.checkpoint:
        dm.load_state_dict(_read_checkpoint(args.checkpoint))
    result = export_source(dm, args.out, example_inputs=(x,))
    if args.json:
        _print_json(asdict(result))
        return 0
    from .tables import console, export_table

    out = console()
    out.print(export_table(result))
    out.print(f"checked: the exported inference module reproduces the original on the example input (max abs diff {result.max_abs_diff:.3g})")
    out.print(f"use it with only torch: import sys; sys.path.insert(0, {args.out!r}); import inference; model = inference.load()")
    return 0


def _read_checkpoint(path: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"--checkpoint {path!r} does not exist; save one with torch.save(dm.state_dict(), path)") from exc
    except Exception as exc:
        raise ConfigError(f"--checkpoint {path!r} is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != "decouple/1":
        raise ConfigError(f"--checkpoint {path!r} is not a DecoupledModel.state_dict(); save one with torch.save(dm.state_dict(), path)")
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

from . import demo as _demo  # noqa: E402,F401  (registers "demo"; decouple/demo.py imports this module)


# ---------------------------------------------------------------------------------------------
# Entry point


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="decouple", description="Look at what decouple does to a model before training it.")
    parser.add_argument("--version", action="version", version=f"decouple {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if "example_inputs" in text:
        text += " (on the command line the example input comes from --input-shape, --input-dtype and --input-high)"
    return text


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"decouple: warning: {_one_line(Warning(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``decouple`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit with status 2 here
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.run(args))
        except DecoupleError as exc:
            print(f"decouple {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return USAGE_ERROR
        except KeyboardInterrupt:
            print("decouple: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0
