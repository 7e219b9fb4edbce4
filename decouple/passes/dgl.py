"""Method ``dgl``: Decoupled Greedy Learning (Belilovsky, Eickenberg & Oyallon, ICML 2020).

Eugene Belilovsky, Michael Eickenberg, Edouard Oyallon. *Decoupled Greedy Learning of CNNs.*
Proceedings of the 37th International Conference on Machine Learning (ICML), PMLR 119, 2020
(arXiv:1901.08164).

Every stage but the last trains an auxiliary network on its representation with cross-entropy,
``min CE(a_j(h_j), y)`` over the stage's and ``a_j``'s parameters (the greedy objective, solved
for all stages at once on the same batch: no stage waits for a later one). The last stage
trains the model's own loss. Like ``early_exit``, the auxiliary networks are classifiers, so
they serve ``inference_module(exit=l)`` and ``exit_threshold=p``; unlike ``early_exit`` they have
depth (``decouple.objectives.dgl``: the paper's CNN, MLP and MLP-SR auxiliary networks), which is
all that tells the two methods apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..objectives.dgl import AUX_VARIANTS, aux_network
from ..objectives.early_exit import ExitObjective
from ..objectives.stage_info import StageInfo
from .pooling import PoolOptions
from .registry import register_method

__all__ = ["DGLOptions", "make_dgl", "DGL"]


@dataclass(frozen=True)
class DGLOptions(PoolOptions):
    """Options of ``method="dgl"``.

    aux: the auxiliary network: "cnn" (two 3x3 conv layers, averaging to 2x2, a linear layer; the
    default), "mlp" (averaging to 2x2, a 3-layer MLP) or "mlp-sr" (three 1x1 conv layers at a
    quarter of the resolution, then as "mlp"). On representations that are not feature maps
    every variant is the 3-layer MLP on the pooled vector (``pool``, ``pool_size``, ``mask``).
    """

    aux: str = "cnn"

    def __post_init__(self) -> None:
        if self.aux not in AUX_VARIANTS:
            raise ConfigError(f"aux must be one of {', '.join(AUX_VARIANTS)}, got {self.aux!r}")


def make_dgl(info: StageInfo) -> ExitObjective:
    """Stage ``info.index``'s auxiliary network, trained with cross-entropy."""
    classes = info.require_classes()
    shape = tuple(int(s) for s in info.example.shape[1:]) if info.feature_map else None
    if shape is None and info.options.aux != "mlp":
        info.note(
            f"dgl's {info.options.aux!r} auxiliary network reads a feature map; the representation is "
            f"{tuple(info.example.shape)}, so it is the 3-layer MLP on the pooled vector"
        )
    network = aux_network(info.options.aux, shape, info.pool, info.pooled_dim, classes)
    return ExitObjective(network, classes, method=info.method)


DGL = register_method(
    "dgl",
    make_dgl,
    options=DGLOptions,
    summary="decoupled greedy learning: an auxiliary network per stage, cross-entropy (Belilovsky et al. 2020)",
)
