"""Method ``deinfo``: DeInfoReg, decoupled learning with information regularization (Neurocomputing 2025).

Zih-Hao Huang, You-Teng Lin, Hung-Hsuan Chen. *DeInfoReg: A Decoupled Learning Framework with
Information Regularization for Better Training Throughput.* Neurocomputing, 2025 (arXiv:2506.18193).

Every stage but the last gets a projection head (``Linear - BatchNorm - ReLU`` layers, 2048 wide
as the released code's default ``--mlp 2048-2048-2048``) on its pooled representation, trained
so that the batch's similarity matrix of the normalised projections matches the labels'
(mean squared error), plus a variance hinge and a covariance penalty on the projections
(``decouple.objectives.deinfo`` has the equations and where this reading may differ). The last
stage trains the model's own loss; inference is the original model.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..objectives.deinfo import DeInfoRegObjective, batchnorm_projector
from ..objectives.stage_info import StageInfo
from .pooling import PoolOptions
from .registry import register_method

__all__ = ["DeInfoRegOptions", "make_deinfo", "DEINFO"]


@dataclass(frozen=True)
class DeInfoRegOptions(PoolOptions):
    """Options of ``method="deinfo"``.

    head_dims: sizes of the projector's layers ((2048, 2048, 2048), the released default).
    invariance_weight, variance_weight, covariance_weight: weights of the three terms (1 each).
    gamma: the standard deviation the variance hinge asks of every projected dimension (1).
    """

    head_dims: tuple[int, ...] = (2048, 2048, 2048)
    invariance_weight: float = 1.0
    variance_weight: float = 1.0
    covariance_weight: float = 1.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        dims = self.head_dims
        if not isinstance(dims, tuple) or not dims or any(not isinstance(d, int) or d < 1 for d in dims):
            raise ConfigError(f"head_dims must be a tuple of positive sizes, got {dims!r}")
        for name in ("invariance_weight", "variance_weight", "covariance_weight", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")


def make_deinfo(info: StageInfo) -> DeInfoRegObjective:
    """Stage ``info.index``'s projection head and DeInfoReg loss."""
    options = info.options
    weights = (options.invariance_weight, options.variance_weight, options.covariance_weight)
    return DeInfoRegObjective(
        info.pool, batchnorm_projector(info.pooled_dim, options.head_dims), info.require_classes(),
        weights=weights, gamma=float(options.gamma),
    )  # fmt: skip


DEINFO = register_method(
    "deinfo",
    make_deinfo,
    options=DeInfoRegOptions,
    summary="DeInfoReg: label-similarity, variance and covariance terms on a projection per stage (Huang et al. 2025)",
)
