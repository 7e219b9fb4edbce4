"""Arguments the ``decouple`` commands share: the model, its example input, the method and split points."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from ..api import convert
from ..balance import BALANCE_KINDS
from ..errors import ConfigError, InputError
from ..frontend.trace import DYNAMIC_SIZES
from ..model import DecoupledModel
from ..passes import METHODS
from ..passes.registry import Method, parse_options
from .model_spec import SCHEMES, ModelSpec, accepts_keyword, build_model, import_attribute, parse_model_spec

__all__ = [
    "add_model_arguments",
    "add_method_arguments",
    "add_conversion_arguments",
    "add_json_argument",
    "parse_shape",
    "parse_json_object",
    "parse_splits",
    "example_input",
    "build",
    "method_from_args",
    "convert_from_args",
    "print_json",
]

_DTYPES = {
    "float": torch.float32, "float32": torch.float32, "double": torch.float64, "float64": torch.float64,
    "half": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "long": torch.int64, "int64": torch.int64, "int": torch.int32, "int32": torch.int32, "bool": torch.bool,
}  # fmt: skip


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, its keyword arguments and the example input."""

    schemes = ", ".join(f"{prefix}:NAME" for prefix in SCHEMES)
    parser.add_argument("model", metavar="MODEL", help=f"{schemes}, package.module:factory or file.py:factory")
    parser.add_argument(
        "--kwargs",
        default="{}",
        metavar="JSON",
        help="keyword arguments of the model builder, e.g. '{\"num_classes\": 10}'",
    )
    parser.add_argument(
        "--input-shape", required=True, metavar="N,C,...", help="shape of a random example input, e.g. 2,3,32,32"
    )
    parser.add_argument(
        "--input-dtype",
        default="float",
        choices=sorted(_DTYPES),
        metavar="DTYPE",
        help=f"dtype of the example input: {', '.join(sorted(_DTYPES))} (long for token ids)",
    )
    parser.add_argument(
        "--input-high",
        type=int,
        default=2,
        metavar="N",
        help="integer inputs are drawn from [0, N) (e.g. the vocabulary size)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="number of classes: passed to the model builder (when it takes num_classes) and to convert()",
    )
    parser.add_argument(
        "--tracer",
        default="auto",
        choices=("auto", "fx", "export"),
        help="tracing frontend (default: fx, falling back to torch.export)",
    )
    parser.add_argument(
        "--dynamic-sizes",
        default="all",
        choices=DYNAMIC_SIZES,
        help="which input sizes a torch.export trace keeps dynamic (default: all; the others are checked on entry)",
    )
    parser.add_argument(
        "--leaf-module",
        action="append",
        default=[],
        metavar="NAME",
        help="qualified name of a module to keep as one opaque call (repeatable)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the model's initial weights and the example input"
    )


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """The method, its options, and how ``--stages N`` balances the stages."""
    parser.add_argument(
        "--method",
        default="scl",
        metavar="NAME|MODULE:FACTORY",
        help=f"training method: {', '.join(METHODS)} (default scl), or package.module:make_objective "
        "(a function info -> decouple.LocalObjective, or a decouple.Method)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, value parsed as JSON when possible (repeatable), e.g. temperature=0.5",
    )
    parser.add_argument(
        "--balance",
        default="flops",
        choices=BALANCE_KINDS,
        help="with --stages N: what the stages balance, local heads included (default flops)",
    )


def add_conversion_arguments(parser: argparse.ArgumentParser) -> None:
    """Method, split points and method options."""
    add_method_arguments(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--splits", metavar="A,B,...", help="module names to cut after, in forward order (see `decouple splits`)"
    )
    group.add_argument(
        "--stages", type=int, metavar="N", help="N stages balanced by cost among the candidate split points"
    )


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")


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
        raise ConfigError(
            f"{flag} is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}; quote it like '{{\"num_classes\": 10}}'"
        ) from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object like '{{\"num_classes\": 10}}', got {text!r}")
    return value


def parse_splits(args: argparse.Namespace) -> list[str] | int:
    if args.stages is not None:
        return int(args.stages)
    if args.splits is None:
        raise ConfigError(
            "give --splits A,B,... (module names to cut after) or --stages N; `decouple splits MODEL --input-shape ...` lists the candidates"
        )
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

    spec = parse_model_spec(args.model)
    kwargs = parse_json_object(args.kwargs, "--kwargs")
    if args.num_classes is not None:
        if args.num_classes < 1:
            raise ConfigError(f"--num-classes must be a positive integer, got {args.num_classes}")
        if "num_classes" not in kwargs and accepts_keyword(spec, "num_classes"):
            kwargs["num_classes"] = args.num_classes
    torch.manual_seed(args.seed)
    return build_model(spec, kwargs)


def method_from_args(args: argparse.Namespace) -> Any:
    """``--method``: a registered name as it is, or the object ``package.module:factory`` names."""
    text = args.method
    if text in METHODS or ":" not in text:
        return text  # convert() reports an unknown name with the close matches
    module, _, name = text.rpartition(":")
    if not module or not name.isidentifier():
        raise ConfigError(
            f"--method {text!r}: give a registered method ({', '.join(METHODS)}) or package.module:make_objective"
        )
    found = import_attribute(ModelSpec(text, "factory", module, name))
    if not (isinstance(found, Method) or callable(found)):
        raise ConfigError(
            f"--method {text!r} is a {type(found).__name__}; point it at a function info -> decouple.LocalObjective "
            "or at a decouple.Method"
        )
    return found


def convert_from_args(args: argparse.Namespace) -> tuple[DecoupledModel, torch.Tensor]:
    """Build, then convert the model as the arguments say; returns the DecoupledModel and the example input."""
    model = build(args)
    x = example_input(args)
    splits = parse_splits(args)
    options = parse_options(args.option)
    dm = convert(
        model, method=method_from_args(args), splits=splits, example_inputs=(x,), num_classes=args.num_classes,
        tracer=args.tracer, dynamic_sizes=args.dynamic_sizes, leaf_modules=args.leaf_module, balance=args.balance if isinstance(splits, int) else "flops", **options,
    )  # fmt: skip
    return dm, x


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
