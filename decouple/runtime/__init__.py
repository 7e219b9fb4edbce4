"""Runtimes that train the stages of a compiled model.

``config.py`` (the conversion's training settings) and ``step.py`` (a stage's local step: autocast,
accumulation, clipping, scaler, schedules; every runtime calls it), ``prepare.py`` and
``compiled.py`` (schedulers, scalers, ``torch.compile`` with eager fallback), ``sequential.py``
(the reference semantics: one stage after another), ``pipeline.py`` (one thread per stage on
consecutive batches, with ``schedule.py``, ``timeline.py``, ``devices.py``), ``fit.py`` (epochs over
a loader, with ``validation.py``, ``callbacks.py``, ``loggers.py``, ``checkpoints.py``,
``progress.py``), ``batches.py`` (reading a batch), ``state.py`` (saving and loading stage state),
``stats.py``; ``distributed/`` runs one stage per rank of torch.distributed.
"""

from .batches import unpack_batch
from .protocol import StagedModel
from .sequential import forward_stages, train_step

__all__ = ["StagedModel", "forward_stages", "train_step", "unpack_batch"]
