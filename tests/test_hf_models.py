"""Tiny Hugging Face models built offline from configs (``benchmarks/hf_zoo.py``: hidden size 32, 2 layers, no download).

Encoder-decoder and relative-position models (T5, BART, DeBERTa-v2) go through ``tracer="export"``,
whose lifted constants and buffers must land in the stages that read them, with ``scl``,
``early_exit`` and ``al``: gradient isolation, the inference module equals the original model, and
``effective_state_dict()`` loads strictly into the original class. One architecture per family
(encoder, decoder with rotary positions, encoder-decoder, relative positions, windowed vision
transformer) then goes through every check of the coverage benchmark with ``splits=N``. The default
run keeps one method per model; the rest are marked slow.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

import decouple
from benchmarks import coverage, hf_zoo
from decouple.objectives.losses import logits_of

from .helpers import assert_gradient_isolation, one_thread, small_options

pytest.importorskip("transformers", minversion="4.40")  # a [dev] dependency: installed wherever the tests run

LIFTED = ["T5ForSequenceClassification", "BartForSequenceClassification", "DebertaV2ForSequenceClassification"]
METHODS = ["scl", "early_exit", "al"]
#: one method per model in the default run, so that each method and each model runs once
LIFTED_FAST = [
    ("T5ForSequenceClassification", "scl"),
    ("BartForSequenceClassification", "early_exit"),
    ("DebertaV2ForSequenceClassification", "al"),
]
LIFTED_SLOW = [(n, m) for n in LIFTED for m in METHODS if (n, m) not in LIFTED_FAST]

#: family: the architecture that stands for it
FAMILIES = {
    "encoder": "BertForSequenceClassification",
    "decoder with rotary positions": "Qwen2ForSequenceClassification",
    "encoder-decoder": "T5ForSequenceClassification",
    "relative positions": "DebertaV2ForSequenceClassification",
    "windowed vision transformer": "SwinForImageClassification",
}
#: families converted with fewer dynamic sizes: a tiny Swin's export takes minutes with a dynamic image size
FAMILY_SIZES = {"windowed vision transformer": "batch"}
FAMILIES_FAST = [("encoder", "scl"), ("decoder with rotary positions", "early_exit")]
FAMILIES_SLOW = [(f, m) for f in FAMILIES for m in METHODS if (f, m) not in FAMILIES_FAST]


def _target(n: int) -> torch.Tensor:
    return torch.arange(n) % hf_zoo.CLASSES


def _check_lifted(name: str, method: str) -> None:
    case = hf_zoo.model_case(name)
    model = case.build()
    x, y = case.inputs(4), _target(4)
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecation notes
        dm = decouple.convert(
            model, method, 3, case.inputs(2), tracer="export", num_classes=hf_zoo.CLASSES, **small_options(method)
        )
        assert dm.num_stages == (2 if method == "al" else 3)  # al drops the model's head stage
        model.eval()
        dm.eval()
        with torch.no_grad():
            got = logits_of(dm.inference_module()(**x))
            if method == "al":  # al replaces the model's head by design
                assert got.shape == (4, hf_zoo.CLASSES)
            else:
                torch.testing.assert_close(got, logits_of(model(**x)), rtol=1e-4, atol=1e-5)
        dm.train()
        assert_gradient_isolation(dm, **x, target=y)
        dm.train_step(**x, target=y)
        target = dm.inference_module() if method == "al" else case.build()
        if method == "al":
            with torch.no_grad():
                for p in target.parameters():
                    p.add_(1.0)  # a different state, so loading must overwrite every weight
        else:
            assert type(target) is type(model)
        target.load_state_dict(dm.effective_state_dict(), strict=True)
        target.eval()
        dm.eval()
        with torch.no_grad():
            torch.testing.assert_close(
                logits_of(target(**x)), logits_of(dm.inference_module()(**x)), rtol=1e-4, atol=1e-5
            )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, method", LIFTED_FAST)
def test_lifted_constants_of_encoder_decoder_and_relative_position_models(name: str, method: str) -> None:
    _check_lifted(name, method)


@pytest.mark.slow
@pytest.mark.parametrize("name, method", LIFTED_SLOW)
def test_lifted_constants_every_method(name: str, method: str) -> None:
    _check_lifted(name, method)


def _check_family(family: str, method: str) -> None:
    with one_thread():
        case = hf_zoo.model_case(FAMILIES[family])
        row = coverage.check_method(case, method, dynamic_sizes=FAMILY_SIZES.get(family, "all"))
    assert row.stages >= 2, f"{family}: {row.error}"
    assert row.passed, f"{family} ({FAMILIES[family]}) / {method}: {row.error}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family, method", FAMILIES_FAST)
def test_hf_family(family: str, method: str) -> None:
    _check_family(family, method)


@pytest.mark.slow
@pytest.mark.parametrize("family, method", FAMILIES_SLOW)
def test_hf_family_slow(family: str, method: str) -> None:
    _check_family(family, method)


def test_architectures_come_from_the_auto_mappings() -> None:
    names: dict[str, Any] = hf_zoo.architectures()
    assert set(FAMILIES.values()) | set(LIFTED) <= set(names)
    assert all("ForSequenceClassification" in n or "ForImageClassification" in n for n in names)
    config = hf_zoo.tiny_config("t5")
    assert (config.d_model, config.num_layers, config.num_labels, config.use_cache) == (32, 2, 3, False)
