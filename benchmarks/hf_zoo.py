"""Model coverage: convert every Hugging Face sequence and image classifier that builds from a tiny config.

    python benchmarks/hf_zoo.py                                  # every architecture, scl / al / early_exit
    python benchmarks/hf_zoo.py --models BertForSequenceClassification SwinForImageClassification --methods scl

The architectures are every ``*ForSequenceClassification`` and ``*ForImageClassification`` class of
the installed transformers, read from its auto mappings (``MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES``,
``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES``). Each is built from its default config shrunk to a
tiny one (``AutoConfig.for_model``: hidden size 32, 2 layers, 2 heads, vocabulary 99, images of 32 px
where the config has a size; nothing is downloaded) with 3 labels and ``use_cache=False``; text models
get 8 tokens (the last one the end-of-sequence token, as encoder-decoder classifiers read it), image
models the smallest side they accept. The checks and the report are those of ``benchmarks/zoo.py``
(``benchmarks/coverage.py``); an architecture whose tiny config does not build or run is listed as
*not built* (with the reason), one that converts but cannot work is *refused* by ``convert()`` with a
``DecoupleError`` naming why. Results go to ``benchmarks/hf_zoo.md`` and ``benchmarks/hf_zoo.csv``.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download: every model is built from a config
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

if __package__ in (None, ""):  # run as a script: import the shared runner from this folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import coverage

__all__ = ["HFCase", "CATALOG", "architectures", "model_case", "tiny_config", "main"]

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = 3
TOKENS = 8
HIDDEN, FFN, LAYERS, HEADS, VOCAB, HEAD_DIM = 32, 64, 2, 2, 99, 16
#: image sides tried in turn (the config's ``image_size`` is set to the first that runs)
SIZES = (32, 64, 96, 128, 224)

#: config attributes set to tiny values wherever a config has them (as an int)
TINY: dict[str, int] = {
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "embed_dim", "embedding_size", "word_embed_proj_dim",
                     "pooler_hidden_size", "d_embed", "projection_dim"), HIDDEN),
    **dict.fromkeys(("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
                     "num_decoder_layers", "num_encoder_layers"), LAYERS),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
                     "decoder_attention_heads", "num_key_value_heads"), HEADS),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner",
                     "decoder_intermediate_size"), FFN),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size"), 32),
    **dict.fromkeys(("head_dim", "d_kv", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "kv_lora_rank",
                     "q_lora_rank"), HEAD_DIM),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "max_source_positions", "max_target_positions",
                     "n_ctx"), 64),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk"), 2),
    "vocab_size": VOCAB,
    "rotary_dim": 8,
    "window_size": 2,
}  # fmt: skip

#: keys of :data:`TINY` that count layers: left alone in configs whose stages are lists (``depths``)
LAYER_KEYS = {k for k, v in TINY.items() if v == LAYERS and "layer" in k}

#: what the generic shrinking gets wrong for a model type: attributes to set after it
OVERRIDES: dict[str, dict[str, Any]] = {
    "deepseek_v2": {"num_experts_per_tok": 2, "n_group": 1, "topk_group": 1},
    "perceiver": {"d_latents": 32, "num_latents": 8, "num_self_attends_per_block": 2, "num_self_attention_heads": 2,
                  "num_cross_attention_heads": 1},
}  # fmt: skip


def architectures() -> dict[str, str]:
    """Every sequence and image classification class of the installed transformers, by name: its model type."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    found: dict[str, str] = {}
    for mapping in (MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES):
        for model_type, classes in sorted(mapping.items()):
            for name in classes if isinstance(classes, tuple) else (classes,):
                found.setdefault(name, model_type)
    return found


def tiny_config(model_type: str, image_size: int | None = None) -> Any:
    """The default config of ``model_type`` shrunk to a tiny model with :data:`CLASSES` labels."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    present = set(config.to_dict()) | set(getattr(config, "attribute_map", {}))
    staged = isinstance(getattr(config, "depths", None), (list, tuple)) or isinstance(
        getattr(config, "hidden_sizes", None), (list, tuple)
    )
    for key, value in TINY.items():
        current = getattr(config, key, None) if key in present and not (staged and key in LAYER_KEYS) else None
        if isinstance(current, int) and not isinstance(current, bool):
            setattr(config, key, value)
    for key, value in list(config.to_dict().items()):
        if key.endswith("_token_id") and isinstance(value, int) and value >= VOCAB:
            setattr(config, key, {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}.get(key, 3))
        elif key == "depths" and isinstance(value, (list, tuple)):
            config.depths = [1] * len(value)
        elif key == "hidden_sizes" and isinstance(value, (list, tuple)):
            config.hidden_sizes = [8 * 2**i for i in range(len(value))]
        elif key in ("num_heads", "num_attention_heads") and isinstance(value, (list, tuple)):
            setattr(config, key, [HEADS] * len(value))
        elif (
            key == "layer_types"
            and isinstance(value, list)
            and isinstance(getattr(config, "num_hidden_layers", 0), int)
        ):
            config.layer_types = value[: config.num_hidden_layers]
    if image_size is not None and "image_size" in present:
        config.image_size = image_size
    for key, value in OVERRIDES.get(model_type, {}).items():
        setattr(config, key, value)
    if getattr(config, "is_encoder_decoder", False) and getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = config.pad_token_id or 0
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    config.num_labels = CLASSES
    if hasattr(config, "use_cache"):
        config.use_cache = False
    return config


@dataclass(frozen=True)
class HFCase:
    """One architecture: its class name and model type, and the input side (image models) or length (text)."""

    name: str
    model_type: str
    size: int
    text: bool
    argument: str  # the forward argument the inputs go to: input_ids, pixel_values or inputs
    masked: bool = True  # forward takes an attention_mask (FNet's does not: it mixes tokens by Fourier transform)

    @property
    def classes(self) -> int:
        return CLASSES

    @property
    def input_kind(self) -> str:
        return f"{self.size} tokens" if self.text else f"{self.size}px"

    def build(self) -> torch.nn.Module:
        import transformers

        torch.manual_seed(0)
        config = tiny_config(self.model_type, None if self.text else self.size)
        return getattr(transformers, self.name)(config)

    def inputs(self, batch: int = coverage.BATCH) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        if not self.text:
            return {self.argument: torch.randn(batch, 3, self.size, self.size, generator=g)}
        config = tiny_config(self.model_type)
        ids = torch.randint(4, VOCAB, (batch, self.size), generator=g)
        eos = getattr(config, "eos_token_id", None)
        ids[:, -1] = eos if isinstance(eos, int) and eos < VOCAB else 2  # encoder-decoder classifiers read the eos
        if self.argument != "input_ids" or not self.masked:
            return {self.argument: ids}
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def model_case(name: str) -> HFCase:
    """The case of one architecture, checked to build and run in both modes (for images: the smallest side)."""
    import transformers

    model_type = architectures()[name]
    cls = getattr(transformers, name)
    params = inspect.signature(cls.forward).parameters
    argument = next((a for a in ("input_ids", "pixel_values", "inputs") if a in params), None)
    if argument is None:
        raise TypeError(f"{name}.forward takes none of input_ids, pixel_values, inputs")
    text = name.endswith("ForSequenceClassification") or argument == "input_ids"  # ImageGPT reads pixel clusters
    failure: Exception | None = None
    masked = "attention_mask" in params
    for size in (TOKENS,) if text else SIZES:
        case = HFCase(name, model_type, size, text, argument, masked)
        try:
            model = case.build()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.eval()(**case.inputs(2))
                model.train()(**case.inputs(2))
        except Exception as exc:  # too small for this architecture, or the tiny config does not work
            failure = exc
            continue
        return case
    assert failure is not None
    raise failure


def by_size(names: list[str]) -> list[str]:
    """Text models first, then image models, each by name (building them all to count parameters costs minutes)."""
    return sorted(names, key=lambda n: (not n.endswith("ForSequenceClassification"), n))


CATALOG = coverage.Catalog(
    title="Hugging Face sequence and image classifiers (tiny configs)",
    script=os.path.abspath(__file__),
    command="python benchmarks/hf_zoo.py",
    setup=f"Every `*ForSequenceClassification` and `*ForImageClassification` class of transformers' auto mappings, "
    f"built from its default config shrunk to a tiny one (hidden size {HIDDEN}, {LAYERS} layers, {HEADS} heads, "
    f"vocabulary {VOCAB}, {CLASSES} labels, `use_cache=False`; nothing downloaded) and fed {coverage.BATCH} "
    f"sequences of {TOKENS} tokens or images of the smallest side it accepts; ",
    names=lambda: sorted(architectures()),
    order=by_size,
    case=model_case,
    csv=os.path.join(HERE, "hf_zoo.csv"),
    md=os.path.join(HERE, "hf_zoo.md"),
)


def main(argv: Sequence[str] | None = None) -> int:
    return coverage.main(CATALOG, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
