"""decouple: compile any PyTorch model into stages trained without end-to-end backpropagation.

    dm = decouple.convert(model, method="scl", splits=["layer1", "layer2", "layer3"],
                          example_inputs=(torch.randn(2, 3, 32, 32),))
    dm.train_step(x, target=y)
    model.load_state_dict(dm.effective_state_dict())
"""

from .api import DecoupledModel, TracerFallbackWarning, convert
from .errors import (
    ConfigError,
    DecoupleError,
    ExportError,
    InputError,
    LaunchError,
    RankFailedError,
    SplitError,
    StageError,
    TargetError,
    TiedParameterError,
    TraceError,
)
from .export_source import export_source
from .losses import supcon_loss
from .passes import METHODS
from .report import ParamCounts
from . import distributed  # decouple.distributed.StageTrainer after `import decouple`
from .runtime.stats import RunStats
from .runtime.timeline import Timeline

__version__ = "0.1.0"

__all__ = [
    "convert",
    "DecoupledModel",
    "ParamCounts",
    "RunStats",
    "Timeline",
    "METHODS",
    "supcon_loss",
    "DecoupleError",
    "TraceError",
    "SplitError",
    "TiedParameterError",
    "TargetError",
    "ConfigError",
    "InputError",
    "ExportError",
    "StageError",
    "RankFailedError",
    "LaunchError",
    "export_source",
    "TracerFallbackWarning",
    "__version__",
]
