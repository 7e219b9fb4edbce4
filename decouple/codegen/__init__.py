"""Code generation: stage modules (``stages.py``), the :class:`Stage` that holds one (``stage.py``), the
inference module (``inference.py``) and the per-sample early-exit model (``early_exit_model.py``)."""

from .early_exit_model import EarlyExitModel
from .inference import build_inference_module, snapshot
from .stage import Stage, StageIO, StageResult
from .stages import build_stages, describe_value

__all__ = [
    "Stage",
    "StageIO",
    "StageResult",
    "build_stages",
    "describe_value",
    "build_inference_module",
    "snapshot",
    "EarlyExitModel",
]
