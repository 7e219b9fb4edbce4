"""Method ``al``: associated learning (Kao & Chen 2021; Wu et al. 2022).

The stages before the last become the encoders ``f_1 .. f_L``; the part of the model after the
last split (its original head) is dropped and replaced by the target path. Each encoder stage
gets a bridge ``b_i`` (pooled representation -> label space) and a target-side autoencoder
(``g_i`` encodes ``t_{i-1}`` to ``t_i``, ``h_i`` decodes it back; ``t_0`` is the one-hot label),
trained with ``|b_i(s_i) - g_i(t_{i-1})|^2 + |h_i(g_i(t_{i-1})) - t_{i-1}|^2`` (eq. 3 of the 2022
paper). Inference runs ``f_1 .. f_L -> b_L -> h_L .. h_1`` (Algorithm 3); the path through
``b_l`` for ``l < L`` is the forward shortcut ``inference_module(exit=l)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..objectives.associated import AssociatedObjective
from ..objectives.heads import ACTIVATIONS, PooledHead, make_mlp
from ..objectives.stage_info import StageInfo
from .pooling import PoolOptions
from .registry import register_method

__all__ = ["AssociatedOptions", "make_associated", "AL"]


@dataclass(frozen=True)
class AssociatedOptions(PoolOptions):
    """Options of ``method="al"``.

    label_dim: size of every label embedding ``t_i`` (128, overcomplete as in the papers).
    encoder_activation / decoder_activation: after the linear maps of ``g_i`` / ``h_i``
    ("tanh", the 2022 paper; "sigmoid" is the 2021 paper's and the released code's choice).
    bridge_activation: after ``b_i`` (None: a linear bridge, as in the 2022 paper).
    bridge_width: a hidden layer of this width in every bridge (None: a single linear map).
    first_loss: how ``h_1`` reconstructs the labels: "mse" against the one-hot vector (eq. 3),
    or "ce", cross-entropy on logits, as the released code does.
    target_grad: the associated loss also trains ``g_i`` (Algorithm 2 of the 2022 paper); False
    trains only ``f_i`` and ``b_i`` with it.
    """

    label_dim: int = 128
    encoder_activation: str = "tanh"
    decoder_activation: str = "tanh"
    bridge_activation: str | None = None
    bridge_width: int | None = None
    first_loss: str = "mse"
    target_grad: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.label_dim, int) or self.label_dim < 1:
            raise ConfigError(f"label_dim must be a positive int, got {self.label_dim!r}")
        for name in ("encoder_activation", "decoder_activation", "bridge_activation"):
            value = getattr(self, name)
            if value is not None and value not in ACTIVATIONS:
                raise ConfigError(f"{name} must be one of {', '.join(ACTIVATIONS)} or None, got {value!r}")
        if self.bridge_width is not None and (not isinstance(self.bridge_width, int) or self.bridge_width < 1):
            raise ConfigError(f"bridge_width must be a positive int or None, got {self.bridge_width!r}")
        if self.first_loss not in ("mse", "ce"):
            raise ConfigError(f"first_loss must be 'mse' (eq. 3) or 'ce' (released code), got {self.first_loss!r}")


def make_associated(info: StageInfo) -> AssociatedObjective:
    """Layer ``i = info.index + 1``: bridge ``b_i``, encoder ``g_i`` and decoder ``h_i``.

    Its exit head runs ``b_i`` then ``h_i .. h_1``; ``h_{i-1} .. h_1`` are the decoders of the
    objectives made for the earlier stages (``info.previous``).
    """
    options = info.options
    classes = info.require_classes()
    i = info.index + 1
    width = options.label_dim
    bridge = PooledHead(
        info.pool,
        make_mlp(info.pooled_dim, width, hidden=options.bridge_width, activation=options.bridge_activation),
    )
    t_prev = classes if i == 1 else width
    encoder = make_mlp(t_prev, width, activation=options.encoder_activation)
    logits = i == 1 and options.first_loss == "ce"
    decoder = make_mlp(width, t_prev, activation=None if logits else options.decoder_activation)
    earlier = [p.decoder for p in reversed(info.previous) if isinstance(p, AssociatedObjective)]
    return AssociatedObjective(
        bridge, encoder, decoder, layer=i, num_classes=classes,
        first_loss=options.first_loss, target_grad=options.target_grad, earlier=earlier,
    )  # fmt: skip


AL = register_method(
    "al",
    make_associated,
    options=AssociatedOptions,
    replaces_head=True,
    summary="associated learning: bridges and target-side autoencoders per stage, the head replaced by decoders",
)
