"""A study: a grid of training runs (architectures x variants x seeds) and the command-line flags the examples share.

Every variant of one (architecture, seed) starts from the same initial weights and sees the same
batches in the same order with the same augmented views, and every run gets the same optimizer,
schedule and epochs: differences in the tables come from the training method alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from .. import parse_options
from ..errors import ConfigError, DecoupleError
from .augment import Augmented, TwoViews
from .image_data import DATASETS, ImageData, image_data
from .models import ARCHITECTURES, get_architecture
from .training import SCHEDULES, FitFunction, RunResult, available_cores, train_and_evaluate

__all__ = [
    "Variant",
    "Study",
    "add_study_arguments",
    "add_training_arguments",
    "study_from_args",
    "parse_method_options",
    "run_script",
]


@dataclass(frozen=True)
class Variant:
    """A row of a comparison: its label, the method, the method's options, and optionally a training loop."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    fit: FitFunction | None = None


def add_study_arguments(parser: argparse.ArgumentParser, *, archs: str, epochs: int, seeds: int, out: str) -> None:
    """The flags every comparison example takes; the defaults run in minutes on a CPU."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset", default="mnist", choices=DATASETS, help="mnist (bundled, offline; default) or torchvision's CIFAR"
    )
    data.add_argument("--data-root", metavar="DIR", help="where torchvision keeps (or downloads) CIFAR")
    data.add_argument("--no-download", action="store_true", help="never download CIFAR; fail if --data-root lacks it")
    data.add_argument("--train-limit", type=int, metavar="N", help="train on the first N training images")
    data.add_argument("--test-limit", type=int, metavar="N", help="test on the first N test images")
    data.add_argument(
        "--views",
        type=int,
        default=1,
        choices=(1, 2),
        help="2: every batch holds two augmented views of each image (the papers' SupCon batches), for every method",
    )
    data.add_argument(
        "--no-augment", action="store_true", help="no augmentation (default: shifts for MNIST, crop + flip for CIFAR)"
    )
    model = parser.add_argument_group("models and training")
    model.add_argument(
        "--archs",
        default=archs,
        help=f"comma-separated, from {', '.join(a for a in ARCHITECTURES if a != 'demo')} (default {archs})",
    )
    model.add_argument(
        "--width",
        default="small",
        help="channels of the first block: an int, 'small' (CPU default) or 'paper' (GPU scale)",
    )
    model.add_argument(
        "--epochs", type=int, default=epochs, help=f"epochs per run (default {epochs}; the papers train 200 or more)"
    )
    model.add_argument(
        "--batch-size", type=int, default=128, help="batch size before the views are concatenated (default 128)"
    )
    model.add_argument(
        "--optimizer", default="adam", choices=("adam", "sgd"), help="per-stage optimizer (default adam)"
    )
    model.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    model.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    model.add_argument(
        "--schedule", default="cosine", choices=SCHEDULES, help="per-epoch learning-rate schedule (default cosine)"
    )
    model.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="an option of one method, e.g. scl:temperature=0.5 or al:first_loss=ce (repeatable)",
    )
    run = parser.add_argument_group("runs")
    run.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    run.add_argument(
        "--seeds", type=int, default=seeds, help=f"number of seeds: --seed, --seed + 1, ... (default {seeds})"
    )
    add_training_arguments(run)
    run.add_argument("--device", default="cpu", help="device of every stage, e.g. cuda or cuda:0 (default cpu)")
    run.add_argument(
        "--cores",
        type=int,
        help="CPU cores every run trains with, so their times compare (default on cpu: all this process may use): "
        "a pipelined run gives each stage thread cores / stages intra-op threads, a sequential run (bp) uses them all",
    )
    run.add_argument("--out", default=out, metavar="DIR", help=f"folder for the CSV files and figures (default {out})")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_training_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--precision`` and ``--compile``, as ``decouple demo`` and every example take them (``convert``'s options)."""
    parser.add_argument(
        "--precision",
        default="32",
        choices=("32", "bf16", "fp16"),
        help="autocast of every stage: 32 (default), bf16 (CPU or recent GPUs) or fp16 (CUDA, with gradient scaling)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile every stage (a stage that fails to compile runs eagerly)"
    )


def parse_method_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["scl:temperature=0.5"]`` -> ``{"scl": {"temperature": 0.5}}``."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        method, sep, rest = item.partition(":")
        if not sep or not method:
            raise ConfigError(f"--option takes METHOD:KEY=VALUE (e.g. scl:temperature=0.5), got {item!r}")
        options.setdefault(method, {}).update(parse_options([rest]))
    return options


@dataclass
class Study:
    """What :func:`study_from_args` read: the data, architectures, seeds and training settings."""

    dataset: str
    archs: list[str]
    epochs: int
    seeds: list[int]
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "cosine"
    width: str = "small"
    views: int = 1
    augment: bool = True
    device: str = "cpu"
    data_root: str | None = None
    download: bool = True
    train_limit: int | None = None
    test_limit: int | None = None
    progress: bool = True
    out: Path = Path("results")
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    precision: str = "32"
    compile: bool = False
    cores: int | None = None  # CPU cores each run trains with (training.Compute.plan; None: leave torch's setting)

    def data(self, seed: int) -> ImageData:
        return image_data(self.dataset, data_root=self.data_root, batch_size=self.batch_size, train_limit=self.train_limit,
                          test_limit=self.test_limit, seed=seed, download=self.download)  # fmt: skip

    def loader(self, data: ImageData, seed: int) -> Iterable[Any]:
        """The training batches of one run: augmented (one or two views) from a generator seeded by ``seed``."""
        transform = data.augment if self.augment else None
        if self.views == 2:
            return TwoViews(data.train, transform, seed=seed)
        return Augmented(data.train, transform, seed=seed) if transform is not None else data.train

    def model_width(self, arch: str) -> int:
        spec = get_architecture(arch)
        if self.width == "small":
            return spec.small_width
        if self.width == "paper":
            return spec.paper_width
        try:
            width = int(self.width)
        except ValueError:
            width = 0
        if width < 1:
            raise ConfigError(f"--width must be a positive int, 'small' or 'paper', got {self.width!r}")
        return width

    def describe(self) -> str:
        views = "two views per image" if self.views == 2 else "one view"
        aug = "augmented" if self.augment else "not augmented"
        return (f"{self.epochs} epochs, batch {self.batch_size} ({views}, {aug}), {self.optimizer} lr {self.lr:g} "
                f"({self.schedule}), weight decay {self.weight_decay:g}, seeds {self.seeds}, device {self.device}"
                + (f", {self.cores} CPU cores per run" if self.cores is not None else "")
                + f", precision {self.precision}{', compiled' if self.compile else ''}")  # fmt: skip

    def run(self, variants: Sequence[Variant], archs: Sequence[str] | None = None) -> list[RunResult]:
        """Train every variant on every architecture for every seed; one line per finished run."""
        return self._run(variants, archs)

    def _run(self, variants: Sequence[Variant], archs: Sequence[str] | None) -> list[RunResult]:
        results: list[RunResult] = []
        grid = [(a, s) for a in (archs or self.archs) for s in self.seeds]
        total = len(grid) * len(variants)
        for arch, seed in grid:
            data = self.data(seed)
            spec = get_architecture(arch)
            torch.manual_seed(seed)
            model = spec.build(data.channels, data.num_classes, data.size, self.model_width(arch))
            for variant in variants:
                data = self.data(seed)  # fresh loaders: the same batch order for every variant
                options = {**self.method_options.get(variant.method, {}), **variant.options}
                print(f"[{len(results) + 1}/{total}] {spec.title} · {variant.label} · seed {seed}", flush=True)
                result, _ = train_and_evaluate(
                    model, variant.method, spec.splits_for(method=variant.method), self.loader(data, seed), data.test, epochs=self.epochs,
                    example=data.example, arch=arch, seed=seed, lr=self.lr, weight_decay=self.weight_decay,
                    optimizer=self.optimizer, schedule=self.schedule, devices=self.device, options=options,
                    progress=self.progress, label=variant.label, fit=variant.fit, precision=self.precision,
                    compile=self.compile, cores=self.cores,
                )  # fmt: skip
                accs = " ".join(f"{100 * a:.2f}" for a in result.test_accuracy)
                print(f"    test accuracy per epoch: {accs}  ({result.seconds:.1f} s, {result.compute})", flush=True)
                results.append(result)
        return results

    def save_config(self, argv: Sequence[str] | None) -> Path:
        """``config.json`` in the output folder: the command line and what it resolved to."""
        self.out.mkdir(parents=True, exist_ok=True)
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        data["argv"] = list(argv) if argv is not None else None
        path = self.out / "config.json"
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def study_from_args(args: argparse.Namespace) -> Study:
    """Check the shared flags and build the :class:`Study`."""
    _positive(args, "epochs", "seeds", "batch_size", "cores", "train_limit", "test_limit")
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    for arch in archs:
        get_architecture(arch)
    if not archs:
        raise ConfigError("--archs names no architecture; e.g. --archs convnet,vgg")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    cores = args.cores if args.cores is not None else (available_cores() if args.device == "cpu" else None)
    return Study(
        dataset=args.dataset, archs=archs, epochs=args.epochs, seeds=[args.seed + i for i in range(args.seeds)],
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer,
        schedule=args.schedule, width=args.width, views=args.views, augment=not args.no_augment, device=args.device,
        data_root=args.data_root, download=not args.no_download, train_limit=args.train_limit,
        test_limit=args.test_limit, progress=not args.no_progress, out=Path(args.out),
        method_options=parse_method_options(args.option), cores=cores, precision=args.precision,
        compile=args.compile,
    )  # fmt: skip


def run_script(main: Callable[[], int], name: str) -> NoReturn:
    """Run an example's ``main()``; bad input prints one line (no traceback) and exits with status 2."""
    try:
        code = main()
    except DecoupleError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
