"""``decouple demo``: the main job. Train a small CNN on real digits without end-to-end backprop, next to backprop.

One command, offline, a few minutes on two CPU cores: the demo CNN is converted (default: SCL,
two stages pipelined in two threads), trained on the bundled MNIST subset with a progress bar per
epoch, and tested; then the same model (same initial weights, same batches, same optimizer and
schedule) is trained with ``bp``. The two test accuracies, training times and the parameter table
(training vs inference) close the run. Both methods train with the same CPU cores (the pipeline
as one thread per stage, bp with as many intra-op threads), and the table says what each used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import METHODS
from ..errors import ConfigError
from .augment import Augmented
from .image_data import image_data
from .models import DemoCNN, replaces_head
from .training import RECIPES, RunResult, available_cores, train_and_evaluate

__all__ = ["DemoConfig", "run_demo", "compare_times", "DEMO_SPLITS", "BASELINE"]

BASELINE = "bp"
DEMO_SPLITS = ("block1", "block2")  # the demo CNN's blocks: 2 or 3 stages


@dataclass(frozen=True)
class DemoConfig:
    """What the demo trains; the defaults are the README's main job (measured in benchmarks/RESULTS.md)."""

    method: str = "scl"
    epochs: int = 4
    stages: int = 2
    seed: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    augment: bool = True
    cores: int | None = None  # CPU cores every method trains with (None: all this process may use)
    progress: bool = True
    train_limit: int | None = None
    test_limit: int | None = None
    precision: str = "32"  # "bf16": bfloat16 autocast (convert(precision=...)), for both methods
    compile: bool = False  # torch.compile every stage (convert(compile=True))

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose from {', '.join(sorted(METHODS))}")
        replaced = replaces_head(self.method)
        most = len(DEMO_SPLITS) + (0 if replaced else 1)
        if not 2 <= self.stages <= most:
            why = (
                f"{self.method} replaces the classifier, so its stages are the 2 conv blocks"
                if replaced
                else "one stage per block"
            )
            raise ConfigError(f"the demo CNN has 2 conv blocks and a classifier ({why}), so --stages must be 2 to {most}, "
                              f"got {self.stages}; examples/vision_compare.py trains deeper models")  # fmt: skip
        for name in ("epochs", "batch_size", "cores"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")

    @property
    def used_cores(self) -> int:
        return self.cores if self.cores is not None else available_cores()

    @property
    def splits(self) -> list[str]:
        """One stage per block; associated learning cuts after every encoder block (its head is replaced)."""
        return list(DEMO_SPLITS[: self.stages if replaces_head(self.method) else self.stages - 1])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _train(config: DemoConfig, method: str, model: torch.nn.Module, label: str) -> RunResult:
    data = image_data("mnist", batch_size=config.batch_size, train_limit=config.train_limit,
                      test_limit=config.test_limit, seed=config.seed)  # fmt: skip
    train = Augmented(data.train, data.augment, seed=config.seed) if config.augment else data.train
    print(f"\n{label}", flush=True)

    def report(epoch: int, result: RunResult) -> None:
        print(f"  epoch {epoch + 1}: test accuracy {100 * result.test_accuracy[-1]:.2f}%", flush=True)

    result, _ = train_and_evaluate(
        model, method, config.splits, train, data.test, epochs=config.epochs, example=data.example, arch="demo",
        seed=config.seed, lr=config.lr, devices="cpu", options=RECIPES.get(method), progress=config.progress,
        on_epoch=report, precision=config.precision, compile=config.compile, cores=config.used_cores,
    )  # fmt: skip
    return result


def _summary(results: Sequence[RunResult], config: DemoConfig, test_size: int) -> list[str]:
    cores = _plural(config.used_cores, "CPU core")
    lines = [f"\ntest accuracy on {test_size:,} MNIST test images after {_plural(config.epochs, 'epoch')}:"]
    lines.append(f"  {'method':<8}{'test accuracy':>15}{'training time':>16}   {f'compute ({cores} each)'}")
    for r in results:
        lines.append(f"  {r.method:<8}{100 * r.final:>14.2f}%{r.seconds:>14.1f} s   {r.compute}")
    if len(results) == 2:
        ours, base = results
        lines.append(f"  {ours.method} - {base.method}: {100 * (ours.final - base.final):+.2f} points")
        lines.append(f"  {compare_times(ours, base, config.stages, cores)}")
    return lines


def compare_times(ours: RunResult, base: RunResult, stages: int, cores: str) -> str:
    """The time comparison in plain words: the pipeline is faster only where it measured faster."""
    ratio = base.seconds / ours.seconds if ours.seconds > 0 else 0.0
    what = f"{ours.method} on a {stages}-stage pipeline"
    if ratio >= 1.0:
        return f"time: {what} trained {ratio:.2f}x as fast as {base.method} with the same {cores}"
    return (f"time: {what} was slower than {base.method} with the same {cores} ({ratio:.2f}x its speed): on one CPU, "
            f"{base.method}'s intra-op threads use the cores better; the pipeline is built for a device per stage")  # fmt: skip


def run_demo(config: DemoConfig) -> list[RunResult]:
    """Train ``config.method`` and the ``bp`` baseline on the demo CNN; print progress, accuracies and parameters."""
    config.check()
    data = image_data(
        "mnist", batch_size=config.batch_size, train_limit=config.train_limit, test_limit=config.test_limit
    )
    torch.manual_seed(config.seed)
    model = DemoCNN(data.channels, data.num_classes, data.size)  # one initial model for every method
    augment = "random shifts of up to 2 pixels" if config.augment else "no augmentation"
    print(
        f"decouple demo: DemoCNN ({sum(p.numel() for p in model.parameters()):,} parameters) on the bundled {data.describe()}"
    )
    print(f"{config.stages} stages (splits {', '.join(config.splits)}) on cpu, {_plural(config.epochs, 'epoch')}, batch {config.batch_size}, "
          f"Adam lr {config.lr:g} with cosine decay, {augment}, seed {config.seed}, {_plural(config.used_cores, 'CPU core')} per method, "
          f"precision {config.precision}{', compiled' if config.compile else ''}")  # fmt: skip
    methods = [config.method] + ([BASELINE] if config.method != BASELINE else [])
    results = []
    for i, method in enumerate(methods):
        how = "pipelined, one thread per stage" if method != BASELINE else "end to end, the baseline"
        same = ": same initial weights, same batches" if i else ""
        results.append(_train(config, method, model, f"[{i + 1}/{len(methods)}] {method} ({how}){same}"))
    for line in _summary(results, config, len(data.test.dataset)):  # type: ignore[arg-type]
        print(line)
    first = results[0].params
    assert first is not None
    print(f"\nparameters of the {config.method} model (training vs inference):")
    print(first)
    return results
