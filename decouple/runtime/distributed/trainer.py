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

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ...errors import ConfigError
from ..batches import unpack_batch
from ..checkpoints import check_keep
from ..protocol import StagedModel
from ..state import load_stage_checkpoint, stage_checkpoint
from .checkpoints import checkpoint_path
from .group import check_peers, check_staged, collective, ensure_process_group, parse_device, place
from .links import Link, LinkError
from .rank_epochs import RankEpochs
from .rank_loop import FailureBoard, StageLog, StageRunner, StepRecord, explain_link_error

__all__ = ["StageTrainer", "History", "gather_effective_state_dict", "check_staged"]

T = TypeVar("T")


@dataclass
class History:
    """What :meth:`StageTrainer.fit` did, the same on every rank.

    ``losses``: ``{"stage{k}": mean local loss per epoch}``; ``batches``: batches each stage
    trained; ``seconds``: wall time of the slowest rank; ``validation``: rank 0's validation
    metrics per epoch.
    """

    losses: dict[str, list[float]]
    batches: int
    seconds: float
    validation: list[dict[str, float]] = field(default_factory=list)  # per epoch, when fit(validation=...)

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
        requested = parse_device(device)
        devices = [requested] if requested is not None else [s.device for s in dm.stages]
        default_backend = "nccl" if any(d.type == "cuda" for d in devices) else "gloo"
        self._owns_group = ensure_process_group(backend or default_backend, timeout)
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
        place(self.stage, self.device)
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
        validation: Iterable[Any] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        keep_checkpoints: int = 2,
    ) -> History:
        """Train this rank's stage until ``epochs`` passes over ``loader`` (read on rank 0 only).

        A batch is a tuple ``(*inputs, target)``; other ranks may pass ``None``. ``on_step`` is
        called on every rank after each of its batches. Every rank must call ``fit``. The stage
        trains with the conversion's precision, schedule, clipping, accumulation and compile.
        ``validation`` (rank 0's loader): after each epoch rank 0 gathers every stage and measures
        the inference path; ``log_dir``: each rank's CSV (and TensorBoard) logs; ``checkpoint_dir``:
        each rank's stage after each epoch, atomically, the newest ``keep_checkpoints`` kept;
        ``resume=True``: every rank continues from the newest epoch all of them saved
        (``rank_epochs.py``). ``epochs`` counts from the start of training.
        """
        if resume and checkpoint_dir is None:
            raise ConfigError(
                "resume=True continues from the newest checkpoint in checkpoint_dir; pass checkpoint_dir="
            )
        ends = RankEpochs(self.dm, self.stage, validation=validation, log_dir=log_dir, checkpoint_dir=checkpoint_dir,
                          keep=check_keep(keep_checkpoints), all_gather=self._all_gather,
                          load_all_stages=lambda: _load_all_stages(self, 0))  # fmt: skip
        base = [0]

        def step(record: StepRecord) -> None:
            ends.step(record, base[0])
            if on_step is not None:
                on_step(record)

        def end(epoch: int, log: StageLog) -> None:
            ends.end(epoch, log)
            base[0] = self.dm.steps

        runner = StageRunner(self.stage, inbox=self.inbox, outbox=self.outbox, on_step=step,
                             config=self.dm.training_config, on_epoch_end=end)  # fmt: skip

        def run() -> History:  # checks inside: a rank that rejects its arguments stops the others too
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
                raise ConfigError(f"epochs must be a positive int, got {epochs!r}")
            if self.rank == 0 and loader is None:
                raise ConfigError(
                    "rank 0 reads the data: pass the training loader to fit() on rank 0 (other ranks may pass None)"
                )
            first, log = ends.start(resume=resume, epochs=epochs)
            base[0] = self.dm.steps
            self.dm.train()
            if self.rank == 0:
                run_log = runner.run_source(epochs, lambda epoch: self._messages(loader), first_epoch=first, log=log)  # type: ignore[arg-type]
            else:
                run_log = runner.run_follower(first_epoch=first, log=log)
            self.dm.steps = ends.base_steps + run_log.batches
            history = History.from_logs(self._all_gather(run_log))
            history.validation = list(ends.metrics)
            ends.finish(history)
            return history

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
        self._guarded(lambda: collective(dist.barrier), lambda: ("while saving checkpoints", None))
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
        collective(lambda: dist.all_gather_object(gathered, value))
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


# -- whole-model views ----------------------------------------------------------------------
def gather_effective_state_dict(trainer: StageTrainer, dst: int = 0) -> dict[str, torch.Tensor] | None:
    """The trained weights of every stage under the original model's keys, on rank ``dst`` (``None`` elsewhere).

    Loads into the original model class with ``strict=True``. Every rank must call it. On
    ``dst``, the other stages of ``trainer.dm`` receive the gathered weights too, so
    ``trainer.dm.inference_module()`` works there.
    """
    if not _load_all_stages(trainer, dst):
        return None
    return {k: v.detach().cpu() for k, v in trainer.dm.effective_state_dict().items()}


def _load_all_stages(trainer: StageTrainer, dst: int) -> bool:
    """Every stage's module and head weights into ``trainer.dm`` on rank ``dst`` (every rank calls it); ``True`` there."""
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
        lambda: collective(lambda: dist.gather_object(mine, gathered, dst=dst)),
        lambda: ("while gathering weights", None),
    )
    if gathered is None:
        return False
    for part in gathered:
        if part["stage"] != stage.index:
            other = trainer.dm.stages[part["stage"]]
            other.module.load_state_dict(part["module"])
            if other.objective is not None:
                other.objective.load_state_dict(part["objective"])
    return True
