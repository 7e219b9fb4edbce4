"""Runtimes that train the stages of a compiled model.

``sequential.py`` (the reference semantics: one stage after another), ``pipeline.py`` (one thread
per stage on consecutive batches, with ``schedule.py``, ``timeline.py``, ``devices.py``), ``fit.py``
(epochs over a loader), ``batches.py`` (reading a batch), ``state.py`` (saving and loading stage
state), ``stats.py``; ``distributed/`` runs one stage per rank of torch.distributed.
"""

from .batches import unpack_batch
from .protocol import StagedModel
from .sequential import forward_stages, train_step

__all__ = ["StagedModel", "forward_stages", "train_step", "unpack_batch"]
