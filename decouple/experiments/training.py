"""A training run measured per epoch: convert, ``fit``, and test the inference module after every epoch.

The demo and the examples compare methods on equal terms through this one function: the same
model copy (same initial weights), the same loader (same order, same augmented views), the same
optimizer and learning-rate schedule, and test accuracy of what inference would run (the
inference module, without local heads) after each epoch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import DecoupledModel, ParamCounts, RunStats, convert
from ..errors import ConfigError

__all__ = [
    "RunResult",
    "FitFunction",
    "evaluate",
    "optimizer_factory",
    "scheduler_factory",
    "train_and_evaluate",
    "SCHEDULES",
    "RECIPES",
    "TEXT_RECIPES",
    "torch_threads",
    "available_cores",
    "Compute",
]

SCHEDULES = ("cosine", "constant")

#: Method options the demo and the examples train with where they differ from the library's
#: defaults (which follow the papers' equations). AL as the released code trains it (cross-entropy
#: on h_1), g_i trained by its autoencoder only, and the 2021 paper's nonlinear bridge (a hidden
#: layer; the paper's top bridge has 5120 units). On the ConvNet, 3 epochs, seed 0: 97.9% with
#: these, 95.3% without the hidden layer, 90.3% with target_grad=True (benchmarks/RESULTS.md).
RECIPES: dict[str, dict[str, Any]] = {"al": {"first_loss": "ce", "target_grad": False, "bridge_width": 1024}}

#: Method options for sequence models, ``{(model kind, method): options}``: what the text example
#: trains with (``examples/text_classification.py``; ablations in benchmarks/RESULTS.md).
TEXT_RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("lstm", "scl"): {"pool": "final_state"},
    ("lstm", "al"): {"pool": "final_state", **RECIPES["al"]},
    ("lstm", "early_exit"): {"pool": "final_state"},
    ("transformer", "al"): dict(RECIPES["al"]),
}

#: ``fit(dm, loader, epochs, *, progress, on_epoch_end)``, like :meth:`DecoupledModel.fit`
FitFunction = Callable[..., Any]


@dataclass
class RunResult:
    """One method trained on one model: test accuracy and mean local losses per epoch, time, parameters."""

    arch: str
    method: str
    seed: int
    label: str = ""  # the row this run belongs to in a comparison (default: the method)
    test_accuracy: list[float] = field(default_factory=list)
    train_accuracy: list[float | None] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0  # training only, the tests after each epoch excluded
    params: ParamCounts | None = None
    compute: str = ""  # what trained it: threads (stage threads x intra-op threads) and devices

    def __post_init__(self) -> None:
        self.label = self.label or self.method

    @property
    def final(self) -> float:
        """Test accuracy after the last epoch."""
        if not self.test_accuracy:
            raise ConfigError(f"run {self.method} on {self.arch} has no epoch yet")
        return self.test_accuracy[-1]


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Compute:
    """The threads a run trains with: one per stage when pipelined (else one), each with ``intra_op`` torch threads.

    ``Compute.plan(cores, stages, pipelined)`` shares ``cores`` CPU cores the same way for every run:
    a sequential run (bp, or ``pipelined=False``) uses them all for intra-op parallelism, a pipeline
    gives each stage thread ``cores // stages`` of them (at least one: more stages than cores
    oversubscribe the cores, which ``str()`` says).
    """

    workers: int
    intra_op: int
    pipelined: bool
    cores: int | None = None  # the cores it was given, when the run was planned for a number of cores
    devices: tuple[str, ...] = ("cpu",)

    @classmethod
    def plan(cls, cores: int, stages: int, pipelined: bool, devices: tuple[str, ...] = ("cpu",)) -> Compute:
        if pipelined:
            return cls(stages, max(1, cores // stages), True, cores, devices)
        return cls(1, cores, False, cores, devices)

    def __str__(self) -> str:
        plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")
        threads = plural(self.intra_op, "intra-op thread")
        text = f"{self.workers} stage threads x {threads}" if self.pipelined else threads
        if self.cores is not None and self.workers * self.intra_op > self.cores:
            text += f" on {plural(self.cores, 'core')}"
        gpus = [d for d in self.devices if d != "cpu"]
        return text + (f", stages on {', '.join(dict.fromkeys(gpus))}" if gpus else "")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (``None``: as they are), then restore the count."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(
    module: Callable[[torch.Tensor], torch.Tensor], loader: Iterable[Any], device: str | torch.device = "cpu"
) -> float:
    """Share of ``loader``'s samples whose argmax prediction equals the label."""
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            prediction = module(x.to(device)).argmax(1).cpu()
            correct += int((prediction == y).sum())
            total += len(y)
    if total == 0:
        raise ConfigError("the test loader is empty: evaluate() needs at least one sample")
    return correct / total


def optimizer_factory(
    lr: float, weight_decay: float = 0.0, kind: str = "adam"
) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    """A per-stage optimizer factory: Adam (the papers' released code) or SGD with momentum 0.9."""
    if lr <= 0:
        raise ConfigError(f"the learning rate must be positive, got {lr}")
    if kind == "adam":
        return lambda params: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {kind!r}; choose 'adam' or 'sgd'")


def scheduler_factory(schedule: str, epochs: int) -> Callable[[torch.optim.Optimizer], Any] | None:
    """The per-epoch learning-rate schedule as ``convert(scheduler=...)`` takes it ("constant": ``None``)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return None
    return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)


def train_and_evaluate(
    model: nn.Module,
    method: str,
    splits: Sequence[str] | int,
    train: Iterable[Any],
    test: Iterable[Any],
    *,
    epochs: int,
    example: torch.Tensor,
    arch: str = "model",
    seed: int = 0,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    schedule: str = "cosine",
    devices: Sequence[str] | str | None = None,
    eval_device: str | None = None,
    options: dict[str, Any] | None = None,
    progress: bool = True,
    pipelined: bool = True,
    on_epoch: Callable[[int, RunResult], Any] | None = None,
    label: str = "",
    fit: FitFunction | None = None,
    precision: str = "32",
    compile: bool = False,
    cores: int | None = None,
) -> tuple[RunResult, DecoupledModel]:
    """Convert a copy of ``model`` with ``method``, train it ``epochs`` times over ``train``, test after each epoch.

    The learning rate follows ``schedule`` per epoch ("cosine" anneals to 0 over ``epochs``), through
    ``convert(scheduler=..., scheduler_interval="epoch")``; a ``fit`` of one's own calls
    ``dm.end_epoch()`` after each epoch. ``precision`` and ``compile`` go to ``convert``.
    ``on_epoch(epoch, result)`` runs after each epoch's test (e.g. to update a progress line).
    ``fit`` replaces :meth:`DecoupledModel.fit` (same arguments) for training loops of one's own.
    ``cores``: train with this many CPU cores, shared as :meth:`Compute.plan` says (so that runs
    compared side by side use the same cores); ``None`` keeps torch's thread setting.
    ``result.compute`` says what the run used.
    """
    torch.manual_seed(seed)  # the local heads' initial weights
    dm = convert(model, method=method, splits=splits, example_inputs=(example,), devices=devices,
                 optimizer=optimizer_factory(lr, weight_decay, optimizer), scheduler=scheduler_factory(schedule, epochs),
                 scheduler_interval="epoch", precision=precision, compile=compile, **(options or {}))  # fmt: skip
    result = RunResult(arch=arch, method=method, seed=seed, label=label, params=dm.param_counts())
    device = eval_device or str(dm.stages[-1].device)
    testing = [0.0]

    def end_of_epoch(epoch: int, stats: RunStats) -> None:
        tic = time.perf_counter()
        result.test_accuracy.append(evaluate(dm.inference_module(device=device), test, device))
        testing[0] += time.perf_counter() - tic
        result.train_accuracy.append(stats.accuracy)
        result.losses.append(dict(stats.losses))
        if on_epoch is not None:
            on_epoch(epoch, result)

    piped = pipelined and not dm.end_to_end and fit is None  # fit() trains bp (and pipelined=False) sequentially
    on = tuple(str(s.device) for s in dm.stages)
    plan = (
        Compute.plan(cores, dm.num_stages, piped, on)
        if cores is not None
        else Compute(dm.num_stages if piped else 1, torch.get_num_threads(), piped, None, on)
    )
    result.compute = str(plan)
    start = time.perf_counter()
    with torch_threads(plan.intra_op):
        if fit is None:
            dm.fit(train, epochs, pipelined=pipelined, progress=progress, on_epoch_end=end_of_epoch)
        else:
            fit(dm, train, epochs, progress=progress, on_epoch_end=end_of_epoch)
    result.seconds = time.perf_counter() - start - testing[0]
    return result, dm
