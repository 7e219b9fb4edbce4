"""Method ``predsim``: local error signals (Nøkland & Eidnes, ICML 2019).

Arild Nøkland, Lars Hiller Eidnes. *Training Neural Networks with Local Error Signals.*
Proceedings of the 36th International Conference on Machine Learning (ICML), PMLR 97, 2019
(arXiv:1901.06656).

Every stage but the last trains on ``(1 - beta) * CE(linear(avgpool(h)), y) + beta *
||S(conv(h)) - S(onehot(y))||^2`` (the "predsim" loss; ``decouple.objectives.predsim`` has the
equation and where this reading may differ); the last stage trains the model's own loss. The
prediction branch is a classifier, so it serves ``inference_module(exit=l)`` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..objectives.heads import PooledHead
from ..objectives.pools import FirstTensor
from ..objectives.predsim import PredSimObjective, prediction_grid
from ..objectives.stage_info import StageInfo
from .pooling import PoolOptions
from .registry import register_method

__all__ = ["PredSimOptions", "make_predsim", "PREDSIM"]


@dataclass(frozen=True)
class PredSimOptions(PoolOptions):
    """Options of ``method="predsim"``.

    beta: weight of the similarity-matching loss (0.99, the paper's predsim setting).
    pred_features: at most this many features reach the prediction layer after averaging a feature
    map (2048, the released code's ``dim_in_decoder``). Representations that are not feature maps
    are read through the pool (``pool``, ``pool_size``, ``mask``).
    """

    beta: float = 0.99
    pred_features: int = 2048

    def __post_init__(self) -> None:
        if not isinstance(self.beta, (int, float)) or not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"beta must be a number in [0, 1], got {self.beta!r}")
        if not isinstance(self.pred_features, int) or self.pred_features < 1:
            raise ConfigError(f"pred_features must be a positive int, got {self.pred_features!r}")


def make_predsim(info: StageInfo) -> PredSimObjective:
    """Stage ``info.index``'s prediction layer and similarity projection."""
    classes = info.require_classes()
    options = info.options
    if info.feature_map and options.pool == "auto":
        channels, height, width = (int(s) for s in info.example.shape[1:])
        grid = prediction_grid(channels, height, width, options.pred_features)
        predictor = PooledHead(
            nn.Sequential(FirstTensor(), nn.AdaptiveAvgPool2d(grid), nn.Flatten()),
            nn.Linear(channels * grid[0] * grid[1], classes),
        )
        similarity = PooledHead(FirstTensor(), nn.Conv2d(channels, channels, 3, padding=1, bias=False))
    else:
        predictor = PooledHead(info.pool, nn.Linear(info.pooled_dim, classes))
        similarity = PooledHead(info.pool, nn.Linear(info.pooled_dim, info.pooled_dim, bias=False))
    return PredSimObjective(predictor, similarity, classes, beta=float(options.beta))


PREDSIM = register_method(
    "predsim",
    make_predsim,
    options=PredSimOptions,
    summary="local error signals: prediction + similarity-matching losses per stage (Nøkland & Eidnes 2019)",
)
