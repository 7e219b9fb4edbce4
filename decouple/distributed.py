"""``decouple.distributed``: the public names of multi-process training (see :mod:`decouple.runtime.distributed`).

dm = decouple.convert(model, method="scl", splits=[...], example_inputs=...)  # on every rank
trainer = decouple.distributed.StageTrainer(dm)  # under torchrun, or inside launch()
trainer.fit(loader, epochs=3)                     # rank 0 reads the data
weights = decouple.distributed.gather_effective_state_dict(trainer)  # a dict on rank 0
"""

from .runtime.distributed import *  # noqa: F403  (this module is the public path of those names)
from .runtime.distributed import __all__ as __all__
