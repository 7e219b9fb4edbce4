"""decouple: compile any PyTorch model into stages trained without end-to-end backpropagation.

    dm = decouple.convert(model, method="scl", splits=["layer1", "layer2", "layer3"],
                          example_inputs=(torch.randn(2, 3, 32, 32),))
    dm.train_step(x, target=y)
    model.load_state_dict(dm.effective_state_dict())

The package is layered the way data flows through the compiler: ``frontend`` (tracing) <
``compiler`` (graph views, partition, cuts, the program IR) < ``objectives`` and ``passes`` <
``codegen`` < ``runtime`` < the model and :func:`convert` < ``cli``, ``standalone`` (source export)
and ``experiments``. This module re-exports the public surface.
"""

from typing import Any

from ._version import __version__
from .api import convert
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
from .frontend.fallbacks import StaticSizesWarning, TracerFallbackWarning
from .model import DecoupledModel
from .objectives.base import LocalObjective, LocalResult
from .objectives.losses import supcon_loss
from .objectives.stage_info import StageInfo
from .param_counts import ParamCounts
from .passes import METHODS, Method, PoolOptions, parse_options, register_method
from .runtime.callbacks import Callback, StepLog
from .runtime.compiled import CompileFallbackWarning
from .runtime.config import TrainingConfig
from .runtime.loggers import CSVLogger, TensorBoardLogger
from .runtime.stats import RunStats
from .runtime.timeline import Timeline
from .standalone import export_source

__all__ = [
    "convert",
    "DecoupledModel",
    "ParamCounts",
    "RunStats",
    "Timeline",
    "TrainingConfig",
    "Callback",
    "StepLog",
    "CSVLogger",
    "TensorBoardLogger",
    "METHODS",
    "Method",
    "register_method",
    "StageInfo",
    "LocalObjective",
    "LocalResult",
    "PoolOptions",
    "parse_options",
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
    "CompileFallbackWarning",
    "StaticSizesWarning",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """``decouple.distributed`` after a plain ``import decouple`` (imported on first use: it pulls in torch.distributed)."""
    if name == "distributed":
        import importlib

        return importlib.import_module(".distributed", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
