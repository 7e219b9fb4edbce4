"""A fast subset of the model zoo (``benchmarks/zoo.py``): one architecture per family, every check.

Residual (resnet18), depthwise with squeeze-excitation (mobilenet_v3_small), fire modules
(squeezenet1_1), inception-style branches with auxiliary heads (googlenet), a vision transformer
(vit_b_16 at 32 px) and dense connections (densenet121). Each converts with ``splits=N`` among
its candidate split points; gradient isolation, transparency, the ``effective_state_dict()``
round trip and one pipelined step must all hold. The full product of families and methods is slow.
"""

from __future__ import annotations

import pytest

from benchmarks import zoo

FAST = [
    ("resnet18", "scl"),
    ("mobilenet_v3_small", "early_exit"),
    ("squeezenet1_1", "scl"),
    ("googlenet", "scl"),
    ("vit_b_16", "al"),
    ("densenet121", "al"),
]
FAMILIES = [
    "resnet18",
    "mobilenet_v3_small",
    "squeezenet1_1",
    "googlenet",
    "vit_b_16",
    "densenet121",
    "swin_t",
    "inception_v3",
]
SLOW = [(m, method) for m in FAMILIES for method in zoo.METHODS if (m, method) not in FAST]


def _check(name: str, method: str) -> None:
    row = zoo.check_method(zoo.model_case(name), method)
    assert row.candidates >= 1 and row.stages >= 2
    assert row.passed, f"{name} / {method}: {row.error}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, method", FAST)
def test_zoo_family(name: str, method: str) -> None:
    _check(name, method)


@pytest.mark.slow
@pytest.mark.parametrize("name, method", SLOW)
def test_zoo_family_slow(name: str, method: str) -> None:
    _check(name, method)


def test_model_case_finds_the_smallest_input() -> None:
    assert zoo.model_case("alexnet").size == 64  # 32 px leaves nothing for its third max-pool
    assert zoo.model_case("vit_b_32").kwargs["image_size"] == 64


def test_report_counts_every_check() -> None:
    ok = zoo.Row("a", "scl", 32, 1.0, 3, 4, "x y z", True, True, True, True, True, 1.0, 2.0, 0.5)
    bad = zoo.Row("b", "scl", 32, 1.0, 3, 4, "x y z", True, False, True, True, True, 1.0, 2.0, 0.5, "isolation: why")
    text = zoo.markdown([ok, bad], ["scl"], "python benchmarks/zoo.py")
    assert "| scl | 2 | 2/2 | 1/2 | 2/2 | 2/2 | 2/2 | 1/2 |" in text
    assert "- **b** / scl: isolation: why" in text
