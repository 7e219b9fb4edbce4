"""The stage trainer: each stage of a decoupled model on its own rank of torch.distributed.

    dm = decouple.convert(model, method="scl", splits=[...], example_inputs=...)  # on every rank
    trainer = decouple.distributed.StageTrainer(dm)  # under torchrun, or inside launch()
    trainer.fit(loader, epochs=3)                     # rank 0 reads the data
    weights = decouple.distributed.gather_effective_state_dict(trainer)  # a dict on rank 0

Only forward messages flow (rank ``k`` to ``k + 1``), so every rank ends with the parameters that
``dm.train_step`` gives in one process. Rank 0 decides the epochs and batches; the other ranks
follow its stream. Every rank converts the same model with the same arguments; the trainer
checks this at start-up by exchanging :meth:`DecoupledModel.fingerprint`.
"""

from __future__ import annotations

import datetime
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ...errors import ConfigError
from ..batches import unpack_batch
from ..protocol import StagedModel
from ..state import load_stage_checkpoint, stage_checkpoint
from .checkpoints import checkpoint_path
from .links import Link, LinkError
from .rank_loop import FailureBoard, StageLog, StageRunner, StepRecord, explain_link_error

__all__ = ["StageTrainer", "History", "gather_effective_state_dict", "check_staged", "check_peers"]

T = TypeVar("T")


@dataclass
class History:
    """What :meth:`StageTrainer.fit` did, the same on every rank.

    ``losses``: ``{"stage{k}": mean local loss per epoch}``; ``batches``: batches each stage
    trained; ``seconds``: wall time of the slowest rank.
    """

    losses: dict[str, list[float]]
    batches: int
    seconds: float

    @classmethod
    def from_logs(cls, logs: Iterable[StageLog]) -> History:
        logs = sorted(logs, key=lambda log: log.stage)
        losses = {f"stage{log.stage}": [float(v) for v in log.epoch_losses if v is not None] for log in logs}
        return cls({k: v for k, v in losses.items() if v}, logs[0].batches, max(log.seconds for log in logs))


class StageTrainer:
    """Trains the stage of ``dm`` whose index is this process's rank.

    Uses the default process group, or initialises one from torchrun's environment (NCCL when
    the stage runs on a GPU, else gloo, with ``timeout`` seconds for every wait between ranks).
    ``device="cuda"`` puts the stage on GPU ``LOCAL_RANK``. The world size must equal
    ``dm.num_stages``. After a failure the trainer tears the process group down, so that the
    other ranks stop at once rather than at the timeout.
    """

    def __init__(
        self,
        dm: StagedModel,
        *,
        device: str | torch.device | None = None,
        backend: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        check_staged(dm)
        requested = _parse_device(device)
        devices = [requested] if requested is not None else [s.device for s in dm.stages]
        default_backend = "nccl" if any(d.type == "cuda" for d in devices) else "gloo"
        self._owns_group = _ensure_process_group(backend or default_backend, timeout)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.dm = dm
        self.board = FailureBoard(dist.distributed_c10d._get_default_store(), self.rank)
        self._closed = False
        nccl = dist.get_backend() == "nccl"
        self.device = requested or (dm.stages[self.rank].device if self.rank < dm.num_stages else torch.device("cpu"))
        if nccl:
            torch.cuda.set_device(self.device)
        self._guarded(
            lambda: check_peers(dm, self.rank, self.world_size), lambda: ("while checking the conversion", None)
        )
        self.stage = dm.stages[self.rank]
        dm.training_config.check_devices([self.device])
        _place(self.stage, self.device)
        comm = self.device if nccl else torch.device("cpu")
        group = dist.group.WORLD
        self.inbox = Link(group, self.rank - 1, comm) if self.rank > 0 else None  # type: ignore[arg-type]
        self.outbox = Link(group, self.rank + 1, comm) if self.rank < self.world_size - 1 else None  # type: ignore[arg-type]

    # -- training ---------------------------------------------------------------------------
    def fit(
        self,
        loader: Iterable[Any] | None = None,
        epochs: int = 1,
        *,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> History:
        """Train this rank's stage for ``epochs`` passes over ``loader`` (read on rank 0 only).

        A batch is a tuple ``(*inputs, target)``; other ranks may pass ``None``. ``on_step`` is
        called on every rank after each of its batches. Every rank must call ``fit``.
        """
        runner = StageRunner(
            self.stage, inbox=self.inbox, outbox=self.outbox, on_step=on_step, config=self.dm.training_config
        )

        def run() -> History:  # checks inside: a rank that rejects its arguments stops the others too
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
                raise ConfigError(f"epochs must be a positive int, got {epochs!r}")
            if self.rank == 0 and loader is None:
                raise ConfigError(
                    "rank 0 reads the data: pass the training loader to fit() on rank 0 (other ranks may pass None)"
                )
            self.dm.train()
            if self.rank == 0:
                log = runner.run_source(epochs, lambda epoch: self._messages(loader))  # type: ignore[arg-type]
            else:
                log = runner.run_follower()
            self.dm.steps += log.batches
            return History.from_logs(self._all_gather(log))

        def where() -> tuple[str, int | None]:
            if runner.position is None:
                return "after its last batch", None
            epoch, b = runner.position
            return f"at batch {b} of epoch {epoch}", b

        return self._guarded(run, where)

    def _messages(self, loader: Iterable[Any]) -> Iterator[tuple[dict[str, Any], Any]]:
        for batch in loader:
            args, kwargs, target = unpack_batch(batch)
            yield self.dm.bind(args, kwargs), target

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This rank's training state: its stage module, objective and optimizer, and the step count."""
        return stage_checkpoint(self.dm, self.stage)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this rank's stage from :meth:`state_dict`, or from a whole ``DecoupledModel.state_dict()``."""
        load_stage_checkpoint(self.dm, self.stage, state)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write this rank's checkpoint to ``directory/stage{k}.pt``; every rank calls it (it ends with a barrier)."""
        path = checkpoint_path(directory, self.stage.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        self._guarded(lambda: _collective(dist.barrier), lambda: ("while saving checkpoints", None))
        return path

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Restore this rank's stage from ``directory/stage{k}.pt``."""
        self.load_state_dict(
            torch.load(checkpoint_path(directory, self.stage.index), map_location=self.device, weights_only=True)
        )

    # -- process group ----------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the process group if this trainer created it."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._closed = True

    def _all_gather(self, value: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        _collective(lambda: dist.all_gather_object(gathered, value))
        return gathered

    def _guarded(self, fn: Callable[[], T], where: Callable[[], tuple[str, int | None]]) -> T:
        """Run ``fn``; on any failure report it on the board and tear the process group down."""
        if self._closed:
            raise ConfigError(
                "this trainer's process group is closed (after a failure, or by close()); start a new run"
            )
        try:
            return fn()
        except LinkError as exc:
            text, batch = where()
            error = explain_link_error(exc, self.board, rank=self.rank, where=text, batch=batch)
            self._fail(f"{type(error).__name__}: {error}", origin=False, cause=error.failed_rank)
            raise error from exc
        except BaseException as exc:
            self._fail(f"{type(exc).__name__}: {exc}", origin=True)
            raise

    def _fail(self, text: str, *, origin: bool, cause: int | None = None) -> None:
        self.board.report(text, origin=origin, cause=cause)
        self._closed = True
        if dist.is_initialized():
            dist.destroy_process_group()


# -- checks ---------------------------------------------------------------------------------
def check_staged(dm: Any) -> None:
    """Reject what cannot run one stage per process."""
    if not isinstance(dm, StagedModel):
        raise ConfigError(
            f"StageTrainer takes the DecoupledModel that decouple.convert() returns, got {type(dm).__name__}"
        )
    if dm.end_to_end:
        raise ConfigError(
            f"method {dm.method!r} trains end to end: its gradient crosses every cut, but between ranks only "
            "forward messages flow. Use a decoupled method (e.g. method='scl'), or train it in one process with dm.train_step"
        )


def check_peers(dm: StagedModel, rank: int, world_size: int) -> None:
    """Every rank converted the same model the same way, and there is one rank per stage."""
    seen: list[Any] = [None] * world_size
    _collective(lambda: dist.all_gather_object(seen, (dm.fingerprint(), dm.num_stages, dm.method)))
    by_conversion: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for r, ident in enumerate(seen):
        by_conversion[tuple(ident)].append(r)
    if len(by_conversion) > 1:
        listed = "; ".join(
            f"{_ranks(ranks)}: fingerprint {fp} (method {method!r}, {n} stages)"
            for (fp, n, method), ranks in by_conversion.items()
        )
        raise ConfigError(
            f"the ranks converted different models ({listed}); call decouple.convert() with the same model, "
            "method, splits, options and example input shapes on every rank"
        )
    if world_size != dm.num_stages:
        hint = " (data-parallel replicas of a stage are not supported)" if world_size % dm.num_stages == 0 else ""
        raise ConfigError(
            f"the model has {dm.num_stages} stages but the process group has {world_size} rank{'s' if world_size != 1 else ''}"
            f"{hint}; run one rank "
            f"per stage (torchrun --nproc-per-node {dm.num_stages}, or launch(fn, {dm.num_stages})), or convert "
            f"into {world_size} stages (e.g. splits={world_size})"
        )


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def _collective(call: Callable[[], Any]) -> Any:
    """Run a collective; a failure (a peer gone, or the timeout) becomes a :class:`LinkError`."""
    try:
        return call()
    except RuntimeError as exc:
        raise LinkError(str(exc), peer=None, sending=False) from exc


# -- process group and placement ------------------------------------------------------------
def _parse_device(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be a device name like 'cpu' or 'cuda': {exc}") from exc
    if parsed.type == "cuda" and parsed.index is None:
        parsed = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if parsed.type == "cuda" and (not torch.cuda.is_available() or parsed.index >= torch.cuda.device_count()):
        raise ConfigError(f"device {parsed} is not available on this machine; use device='cpu' (gloo) or a GPU it has")
    return parsed


def _ensure_process_group(backend: str, timeout: float) -> bool:
    """Initialise the default process group from torchrun's environment; ``True`` if this call did."""
    if dist.is_initialized():
        return False
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(
            "no torch.distributed process group: start the script with torchrun (torchrun --nproc-per-node N "
            "script.py), run it through decouple.distributed.launch(fn, N), or call "
            f"torch.distributed.init_process_group() first (missing environment variables: {', '.join(missing)})"
        )
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return True


def _place(stage: Any, device: torch.device) -> None:
    if stage.device == device:
        return
    stage.to(device)
    stage.device = device
    if stage.optimizer is not None and stage.optimizer.state:
        stage.optimizer.load_state_dict(stage.optimizer.state_dict())  # moves its state to the parameters' device


# -- whole-model views ----------------------------------------------------------------------
def gather_effective_state_dict(trainer: StageTrainer, dst: int = 0) -> dict[str, torch.Tensor] | None:
    """The trained weights of every stage under the original model's keys, on rank ``dst`` (``None`` elsewhere).

    Loads into the original model class with ``strict=True``. Every rank must call it. On
    ``dst``, the other stages of ``trainer.dm`` receive the gathered weights too, so
    ``trainer.dm.inference_module()`` works there.
    """
    stage = trainer.stage
    mine = {
        "stage": stage.index,
        "module": {k: v.detach().cpu() for k, v in stage.module.state_dict().items()},
        "objective": {k: v.detach().cpu() for k, v in stage.objective.state_dict().items()}
        if stage.objective is not None
        else {},
    }
    gathered: list[Any] | None = [None] * trainer.world_size if trainer.rank == dst else None
    trainer._guarded(
        lambda: _collective(lambda: dist.gather_object(mine, gathered, dst=dst)),
        lambda: ("while gathering weights", None),
    )
    if gathered is None:
        return None
    for part in gathered:
        if part["stage"] != stage.index:
            other = trainer.dm.stages[part["stage"]]
            other.module.load_state_dict(part["module"])
            if other.objective is not None:
                other.objective.load_state_dict(part["objective"])
    return {k: v.detach().cpu() for k, v in trainer.dm.effective_state_dict().items()}
