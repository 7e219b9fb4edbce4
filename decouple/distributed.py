"""``decouple.distributed``: the public names of multi-process training (see :mod:`decouple.runtime.distributed`).

dm = decouple.convert(model, method="scl", splits=[...], example_inputs=...)  # on every rank
trainer = decouple.distributed.StageTrainer(dm)  # under torchrun, or inside launch()
trainer.fit(loader, epochs=3)                     # rank 0 reads the data
weights = decouple.distributed.gather_effective_state_dict(trainer)  # a dict on rank 0
"""

from .runtime.distributed import (
    History,
    StageTrainer,
    StepRecord,
    checkpoint_path,
    fit_processes,
    gather_effective_state_dict,
    launch,
    merge_checkpoints,
)

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
