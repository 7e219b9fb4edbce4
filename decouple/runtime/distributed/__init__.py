"""One stage per rank of torch.distributed: only forward messages flow between ranks.

``trainer.py`` (:class:`StageTrainer`), ``mesh.py`` (ranks as replicas x stages),
``replicas.py`` (shards, gradient averaging), ``rank_loop.py`` (one rank's loop), ``failures.py``
(the failure board), ``group.py`` (process group, checks, placement), ``links.py``
(point-to-point messages), ``launch.py`` (local ranks without torchrun), ``checkpoints.py``
(per-rank files), ``processes.py`` (:func:`fit_processes`). The public names are also reachable
as ``decouple.distributed``.
"""

from .checkpoints import checkpoint_path, merge_checkpoints
from .launch import launch
from .processes import fit_processes
from .rank_loop import StepRecord
from .trainer import History, StageTrainer, gather_effective_state_dict

__all__ = [
    "StageTrainer",
    "History",
    "StepRecord",
    "launch",
    "fit_processes",
    "gather_effective_state_dict",
    "merge_checkpoints",
    "checkpoint_path",
]
