"""Method ``infopro``: InfoPro, information propagation (Wang et al., ICLR 2021).

Yulin Wang, Zanlin Ni, Shiji Song, Le Yang, Gao Huang. *Revisiting Locally Supervised Learning:
an Alternative to End-to-end Training.* International Conference on Learning Representations
(ICLR), 2021 (arXiv:2101.10832).

Every stage but the last trains ``lambda_1 * R(x, w(h)) + lambda_2 * CE(a(h), y)``: a small
decoder ``w`` reconstructs the model's input ``x`` from the stage's representation ``h`` and an
auxiliary classifier ``a`` predicts the label (``decouple.objectives.infopro`` has the equation
and where this reading may differ). ``x`` travels with the activations to every stage, like the
targets do. The auxiliary classifier serves ``inference_module(exit=l)`` too.

The weights run linearly from ``(lambda_1, lambda_2)`` at the first local stage to
``(lambda_1_last, lambda_2_last)`` at the last one, as the released code schedules them. The
defaults, ``lambda_1 = 5, lambda_2 = 1`` at every stage, are the released command for ResNet-32
on CIFAR-10 with two local modules; the paper tunes them per data set and number of modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..objectives.heads import PooledHead
from ..objectives.infopro import RECONSTRUCTIONS, InfoProObjective, MapDecoder, VectorDecoder
from ..objectives.pools import FirstTensor
from ..objectives.stage_info import StageInfo
from .pooling import PoolOptions
from .registry import register_method

__all__ = ["InfoProOptions", "make_infopro", "INFOPRO"]


@dataclass(frozen=True)
class InfoProOptions(PoolOptions):
    """Options of ``method="infopro"``.

    lambda_1, lambda_2: weights of the reconstruction and cross-entropy terms at the first local stage
    (5 and 1). lambda_1_last, lambda_2_last: their values at the last local stage, linear in between
    (None: the same as the first). reconstruction: "mse" (default) or "bce" (the released code; the
    input must lie in [0, 1]). decoder_width: channels of the decoder's hidden layer (12).
    aux_width: width of the auxiliary classifier's hidden layer (128).
    """

    lambda_1: float = 5.0
    lambda_2: float = 1.0
    lambda_1_last: float | None = None
    lambda_2_last: float | None = None
    reconstruction: str = "mse"
    decoder_width: int = 12
    aux_width: int = 128

    def __post_init__(self) -> None:
        for name in ("lambda_1", "lambda_2", "lambda_1_last", "lambda_2_last"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ConfigError(
                f"reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, got {self.reconstruction!r}"
            )
        for name in ("decoder_width", "aux_width"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive int, got {getattr(self, name)!r}")


def make_infopro(info: StageInfo) -> InfoProObjective:
    """Stage ``info.index``'s decoder and auxiliary classifier, weighted by its place among the local stages."""
    classes = info.require_classes()
    options = info.options
    name, x = next(iter(info.inputs.items()), ("", None))
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(
            f"method 'infopro' reconstructs the model's first input from each stage, and {name or 'it'!r} is "
            f"{what}, not a float tensor (token ids cannot be reconstructed by a decoder); use a method "
            "without reconstruction (dgl, predsim, early_exit, scl) for this model"
        )
    sigmoid = options.reconstruction == "bce"
    if info.feature_map and x.dim() == 4:
        channels = int(info.example.shape[1])
        decoder: nn.Module = MapDecoder(channels, int(x.shape[1]), width=options.decoder_width, sigmoid=sigmoid)
        wide, stride = (2 * channels, 2) if channels < 64 else (channels, 1)
        classifier = PooledHead(FirstTensor(), nn.Sequential(
            nn.Conv2d(channels, wide, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(wide), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(wide, options.aux_width), nn.ReLU(), nn.Linear(options.aux_width, classes),
        ))  # fmt: skip
    else:
        decoder = VectorDecoder(info.pool, info.pooled_dim, tuple(int(s) for s in x.shape[1:]), sigmoid=sigmoid)
        classifier = PooledHead(info.pool, nn.Sequential(
            nn.Linear(info.pooled_dim, options.aux_width), nn.ReLU(), nn.Linear(options.aux_width, classes),
        ))  # fmt: skip
    local = info.num_stages - 1  # the stages with a local objective; the last trains the task loss
    ratio = info.index / (local - 1) if local > 1 else 0.0
    first = (float(options.lambda_1), float(options.lambda_2))
    last = (
        first[0] if options.lambda_1_last is None else float(options.lambda_1_last),
        first[1] if options.lambda_2_last is None else float(options.lambda_2_last),
    )
    lambda_1, lambda_2 = ((1 - ratio) * a + ratio * b for a, b in zip(first, last))
    return InfoProObjective(
        decoder, classifier, classes, input_name=name, lambda_1=lambda_1, lambda_2=lambda_2,
        reconstruction=options.reconstruction,
    )  # fmt: skip


INFOPRO = register_method(
    "infopro",
    make_infopro,
    options=InfoProOptions,
    summary="InfoPro: reconstruct the input and classify per stage (Wang et al. 2021)",
)
