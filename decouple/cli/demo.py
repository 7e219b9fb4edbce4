"""``decouple demo``: the command-line face of :func:`decouple.experiments.demo.run_demo` (the README's main job)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..experiments.demo import DemoConfig, run_demo
from ..experiments.study import add_training_arguments
from ..passes import METHODS
from .main import Command, register_command
from .main import main as cli_main

__all__ = ["add_demo_arguments", "config_from_args", "main"]


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument(
        "--method",
        default=d.method,
        help=f"training method compared with bp (default {d.method}; any of {', '.join(METHODS)})",
    )
    parser.add_argument(
        "--epochs", type=int, default=d.epochs, help=f"passes over the 12,000 training images (default {d.epochs})"
    )
    parser.add_argument(
        "--stages", type=int, default=d.stages, help=f"2 or 3 stages, one per block of the CNN (default {d.stages})"
    )
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="seed of the initial weights, the batch order and the augmentation"
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    parser.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help=f"Adam learning rate of every stage, decayed by a cosine (default {d.lr:g})",
    )
    parser.add_argument(
        "--no-augment",
        action="store_true",
        help="train on the images as they are (default: random shifts of up to 2 pixels)",
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=d.cores,
        help="CPU cores each method trains with (default: all this process may use): the pipeline runs a thread per "
        "stage with cores / stages intra-op threads each, bp runs as many intra-op threads as cores",
    )
    add_training_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--train-limit", type=int, help=argparse.SUPPRESS)  # tests: the first N training images
    parser.add_argument("--test-limit", type=int, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(
        method=args.method, epochs=args.epochs, stages=args.stages, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
        augment=not args.no_augment, cores=args.cores, progress=not args.no_progress,
        train_limit=args.train_limit, test_limit=args.test_limit, precision=args.precision, compile=args.compile,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    run_demo(config_from_args(args))
    return 0


register_command(Command(
    "demo", "train a small CNN on the bundled MNIST subset with SCL on a 2-stage pipeline, next to backprop", add_demo_arguments, _run,
    "Train the demo CNN on the bundled MNIST subset (offline) with --method (default scl) on a pipeline of --stages "
    "stages, test it, train the same model with bp, and print both test accuracies and the parameter table. "
    "About a minute on two CPU cores. --method al trains with decouple.experiments.RECIPES['al'].",
))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``decouple demo`` with ``argv`` (the demo's own arguments)."""
    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])
