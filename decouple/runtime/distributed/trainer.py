"""The stage trainer: each stage of a decoupled model on its own rank of torch.distributed, optionally replicated.

    dm = decouple.convert(model, method="scl", splits=[...], example_inputs=...)  # on every rank
    trainer = decouple.distributed.StageTrainer(dm)  # under torchrun, or inside launch()
    trainer.fit(loader, epochs=3)                     # rank 0 reads the data
    weights = decouple.distributed.gather_effective_state_dict(trainer)  # a dict on rank 0

Only forward messages flow along a pipeline (stage ``k`` to ``k + 1``), so every rank ends with the
parameters that ``dm.train_step`` gives in one process. With ``R`` replicas the world is an
``R x S`` mesh (:mod:`.mesh`): rank 0 splits each global batch into ``R`` shards, every replica's
pipeline trains on its own shard, and each stage averages its gradients over its replicas before
it steps, so the replicas stay equal and train as one process on the whole batch would.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ...errors import ConfigError
from ..batches import unpack_batch
from ..checkpoints import check_keep, save_atomically
from ..protocol import StagedModel
from ..state import load_stage_checkpoint, stage_checkpoint
from .checkpoints import checkpoint_path
from .failures import FailureBoard, explain_link_error
from .group import check_peers, check_staged, ensure_process_group, parse_device, place
from .links import Link, LinkError, collective
from .mesh import StageMesh, build_mesh, check_world
from .rank_epochs import RankEpochs
from .rank_loop import StageLog, StageRunner, StepRecord
from .replicas import GradientAverager, broadcast_stage, sync_batch_norm

__all__ = ["StageTrainer", "History", "gather_effective_state_dict"]

T = TypeVar("T")


@dataclass
class History:
    """What :meth:`StageTrainer.fit` did, the same on every rank.

    ``losses``: ``{"stage{k}": mean local loss per epoch}`` (over the replicas' shards, which
    are equal); ``batches``: global batches each stage trained; ``seconds``: wall time of the
    slowest rank; ``validation``: rank 0's validation metrics per epoch.
    """

    losses: dict[str, list[float]]
    batches: int
    seconds: float
    validation: list[dict[str, float]] = field(default_factory=list)  # per epoch, when fit(validation=...)

    @classmethod
    def from_logs(cls, logs: Iterable[StageLog]) -> History:
        by_stage: dict[int, list[StageLog]] = defaultdict(list)
        for log in logs:
            by_stage[log.stage].append(log)
        losses: dict[str, list[float]] = {}
        for stage, replicas in sorted(by_stage.items()):
            epochs = zip(*(log.epoch_losses for log in replicas))
            means = [sum(v) / len(v) for v in (list(e) for e in epochs) if all(x is not None for x in v)]
            if means:
                losses[f"stage{stage}"] = [float(m) for m in means]
        first = by_stage[min(by_stage)][0]
        return cls(losses, first.batches, max(log.seconds for group in by_stage.values() for log in group))


class StageTrainer:
    """Trains one stage of ``dm`` (of one replica) on this process: the stage and replica come from the rank.

    Uses the default process group, or initialises one from torchrun's environment (NCCL when
    the stage runs on a GPU, else gloo, with ``timeout`` seconds for every wait between ranks).
    ``device="cuda"`` puts the stage on GPU ``LOCAL_RANK``. The world size must be
    ``dm.num_stages * replicas`` (``replicas=None``: the world size over the stage count); rank
    ``r * S + s`` trains stage ``s`` of replica ``r`` (see :mod:`decouple.runtime.distributed.mesh`).
    ``sync_batchnorm=True`` synchronises batch-norm statistics over a stage's replicas (CUDA
    stages; otherwise they stay per replica). After a failure the trainer tears the process groups
    down, so that the other ranks stop at once rather than at the timeout.
    """

    def __init__(
        self,
        dm: StagedModel,
        *,
        replicas: int | None = None,
        device: str | torch.device | None = None,
        backend: str | None = None,
        timeout: float = 600.0,
        sync_batchnorm: bool = False,
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
        self.replicas = self._guarded(
            lambda: check_world(self.world_size, dm.num_stages, replicas), lambda: ("while checking the world", None)
        )
        self.device = requested or dm.stages[self.rank % dm.num_stages].device
        if nccl:
            torch.cuda.set_device(self.device)
        self._guarded(lambda: check_peers(dm, self.world_size), lambda: ("while checking the conversion", None))
        self.mesh: StageMesh = self._guarded(
            lambda: build_mesh(dm.num_stages, self.replicas, "cuda" if nccl else "cpu"),
            lambda: ("while building the device mesh", None),
        )
        self.stage = dm.stages[self.mesh.stage]
        dm.training_config.check_devices([self.device])
        place(self.stage, self.device)
        comm = self.device if nccl else torch.device("cpu")
        s, r, last = self.mesh.stage, self.mesh.replica, dm.num_stages - 1
        self.inbox = Link(self.mesh.pipeline, s - 1, comm) if s > 0 else None
        self.outbox = Link(self.mesh.pipeline, s + 1, comm) if s < last else None
        world = dist.group.WORLD
        assert world is not None
        if s == 0 and r > 0:  # this replica's data come from rank 0, which reads the loader
            self.inbox = Link(world, 0, comm)
        self.shards = (
            [Link(world, self.mesh.global_rank(q, 0), comm) for q in range(1, self.replicas)] if self.rank == 0 else []
        )
        self.averager: GradientAverager | None = None
        if self.replicas > 1:
            self._guarded(lambda: self._join_replicas(sync_batchnorm), lambda: ("while starting the replicas", None))
        elif sync_batchnorm:
            raise ConfigError(
                "sync_batchnorm=True synchronises a stage's replicas, but this run has one replica per stage"
            )

    def _join_replicas(self, sync_batchnorm: bool) -> None:
        """Start every replica of this stage from replica 0's weights, and average gradients from now on."""
        group = self.mesh.replica_group
        if sync_batchnorm:
            sync_batch_norm(self.stage, group)
        broadcast_stage(self.stage, group, src=self.mesh.global_rank(0, self.mesh.stage))
        if self.stage.objective is not None:
            self.stage.objective.attach_replicas(group, self.replicas)
        self.averager = GradientAverager(list(self.stage.parameters()), group, self.replicas)

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

        A batch is ``(*inputs, target)`` or a dict of keyword inputs with the target under
        ``"target"`` (``decouple.runtime.batches``); other ranks may pass ``None``. With replicas,
        every batch must split into equal shards (a batch size the replica count divides).
        ``on_step`` is called on every rank after each of its batches. Every rank must call ``fit``.
        The stage trains with the conversion's precision, schedule, clipping, accumulation and
        compile. ``validation`` (rank 0's loader): after each epoch rank 0 gathers every stage and
        measures the inference path; ``log_dir``: each stage's CSV (and TensorBoard) logs;
        ``checkpoint_dir``: each stage after each epoch, atomically, the newest ``keep_checkpoints``
        kept (replica 0 of each stage logs and writes); ``resume=True``: every rank continues from
        the newest epoch all of them can read (``rank_epochs.py``). ``epochs`` counts from the start
        of training.
        """
        if resume and checkpoint_dir is None:
            raise ConfigError(
                "resume=True continues from the newest checkpoint in checkpoint_dir; pass checkpoint_dir="
            )
        ends = RankEpochs(self.dm, self.stage, validation=validation, log_dir=log_dir, checkpoint_dir=checkpoint_dir,
                          keep=check_keep(keep_checkpoints), all_gather=self._all_gather,
                          load_all_stages=lambda: _load_all_stages(self, 0), writes=self.mesh.replica == 0)  # fmt: skip
        base = [0]

        def step(record: StepRecord) -> None:
            ends.step(record, base[0])
            if on_step is not None:
                on_step(record)

        def end(epoch: int, log: StageLog) -> None:
            ends.end(epoch, log)
            base[0] = self.dm.steps

        runner = StageRunner(self.stage, inbox=self.inbox, outbox=self.outbox, shards=self.shards,
                             averager=self.averager, replica=self.mesh.replica, on_step=step,
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
                assert loader is not None
                run_log = runner.run_source(epochs, lambda epoch: self._messages(loader), first_epoch=first, log=log)
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
        """This rank's training state: its stage module, objective and optimizer, and the step count.

        The replicas of a stage hold the same state, so it does not depend on the replica count.
        """
        return stage_checkpoint(self.dm, self.stage)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this rank's stage from :meth:`state_dict`, or from a whole ``DecoupledModel.state_dict()``."""
        load_stage_checkpoint(self.dm, self.stage, state)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/stage{k}.pt`` (replica 0 of each stage writes); every rank calls it (it ends with a barrier)."""
        path = checkpoint_path(directory, self.stage.index)
        if self.mesh.replica == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_atomically(self.state_dict(), path)
        self._guarded(lambda: collective(dist.barrier), lambda: ("while saving checkpoints", None))
        return path

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Restore this rank's stage from ``directory/stage{k}.pt`` (written with any replica count)."""
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
        """Run ``fn``; on any failure report it on the board and tear the process groups down."""
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
            earlier = self.board.first_failure(wait=0.0)
            if earlier is not None and earlier.origin and earlier.rank != self.rank:
                # a peer failed first and tore its groups down under a collective inside this stage's own
                # step (a global-contrast gather, say): this failure is that one's echo, not a new one
                text, batch = where()
                link = LinkError(f"{type(exc).__name__}: {exc}", peer=None, sending=False)
                error = explain_link_error(link, self.board, rank=self.rank, where=text, batch=batch)
                self._fail(f"{type(error).__name__}: {error}", origin=False, cause=error.failed_rank)
                raise error from exc
            self._fail(f"{type(exc).__name__}: {exc}", origin=True)
            raise

    def _fail(self, text: str, *, origin: bool, cause: int | None = None) -> None:
        self.board.report(text, origin=origin, cause=cause)
        self._closed = True
        if dist.is_initialized():
            dist.destroy_process_group()


def gather_effective_state_dict(trainer: StageTrainer, dst: int = 0) -> dict[str, torch.Tensor] | None:
    """The trained weights of every stage under the original model's keys, on rank ``dst`` (``None`` elsewhere).

    Loads into the original model class with ``strict=True``. Every rank must call it. On
    ``dst``, the other stages of ``trainer.dm`` receive the gathered weights (replica 0's) too, so
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
        "replica": trainer.mesh.replica,
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
        if part["replica"] == 0 and part["stage"] != stage.index:
            other = trainer.dm.stages[part["stage"]]
            other.module.load_state_dict(part["module"])
            if other.objective is not None:
                other.objective.load_state_dict(part["objective"])
    return True
