"""Model coverage: convert every torchvision classifier with every decoupled method and check the result.

    python benchmarks/zoo.py                                   # every model, scl / al / early_exit
    python benchmarks/zoo.py --models resnet18 vit_b_16 --methods scl --timeout 600 --jobs 1

For each model (``weights=None``, ``num_classes=10``, the smallest input it accepts) and method,
``convert(splits=N)`` picks the split points among the candidates (balanced, local heads
included), then the five checks of ``benchmarks/coverage.py`` (converts, isolation, inference,
state_dict, pipeline) run on a batch of 4 (two classes, two samples each), each model in its own
process; rows go to ``benchmarks/zoo.csv`` and ``benchmarks/zoo.md``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: import the shared runner from this folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import coverage, coverage_report
from benchmarks.coverage import CHECKS, METHODS, Row, check_method, gradient_isolation

__all__ = [
    "ModelCase",
    "Row",
    "CHECKS",
    "METHODS",
    "CATALOG",
    "model_case",
    "check_method",
    "gradient_isolation",
    "all_models",
    "by_size",
    "markdown",
    "main",
]

BATCH = coverage.BATCH
NUM_CLASSES = 10
#: input sizes tried in turn; the first the model accepts in eval mode is used
SIZES = (32, 64, 75, 96, 128, 160, 192, 224, 299)
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class ModelCase:
    """How to build one torchvision model and feed it: builder keyword arguments and input side."""

    name: str
    kwargs: dict[str, Any]
    size: int
    classes: int = NUM_CLASSES

    @property
    def input_kind(self) -> str:
        return f"{self.size}px"

    def build(self) -> torch.nn.Module:
        import torchvision

        return torchvision.models.get_model(self.name, **self.kwargs)

    def inputs(self, batch: int = BATCH) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch, 3, self.size, self.size, generator=g)


def all_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def by_size(names: Sequence[str]) -> list[str]:
    """``names`` from the fewest parameters to the most (built on the meta device: no memory, no init)."""
    import torchvision

    def params(name: str) -> int:
        try:
            with torch.device("meta"):
                model = torchvision.models.get_model(name, **_builder_kwargs(name))
        except Exception:  # a builder that computes on tensors (regnet's widths): build it for real
            model = torchvision.models.get_model(name, **_builder_kwargs(name))
        return sum(p.numel() for p in model.parameters())

    return sorted(names, key=lambda n: (params(n), n))


def _builder_kwargs(name: str) -> dict[str, Any]:
    """``weights=None, num_classes=10``, and an image size for models that fix one at construction."""
    kwargs: dict[str, Any] = {"weights": None, "num_classes": NUM_CLASSES}
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        kwargs["image_size"] = 2 * patch  # a 2 x 2 grid of patches
    return kwargs


def model_case(name: str) -> ModelCase:
    """The model's builder arguments and the smallest input side (from :data:`SIZES`) it runs on."""
    kwargs = _builder_kwargs(name)
    if "image_size" in kwargs:
        return ModelCase(name, kwargs, kwargs["image_size"])
    model = ModelCase(name, kwargs, 0).build()
    for size in SIZES:
        try:  # both modes: auxiliary heads run in training mode only (inception_v3's needs 75 px and more)
            with torch.no_grad():
                model.eval()(torch.zeros(1, 3, size, size))
                model.train()(torch.randn(2, 3, size, size))
        except Exception:  # too small for this architecture: try the next size
            continue
        return ModelCase(name, kwargs, size)
    raise RuntimeError(f"{name} runs on none of the input sizes {SIZES}")


CATALOG = coverage.Catalog(
    title="torchvision classifiers",
    script=os.path.abspath(__file__),
    command="python benchmarks/zoo.py",
    setup=f"Each model is built with `weights=None, num_classes={NUM_CLASSES}` and fed {BATCH} images of the "
    "smallest side it accepts; ",
    names=all_models,
    order=by_size,
    case=model_case,
    csv=os.path.join(HERE, "zoo.csv"),
    md=os.path.join(HERE, "zoo.md"),
)


def markdown(rows: Sequence[Row], methods: Sequence[str], command: str) -> str:
    """The report of a torchvision run (see :func:`benchmarks.coverage_report.markdown`)."""
    return coverage_report.markdown(rows, methods, command, CATALOG)


def main(argv: Sequence[str] | None = None) -> int:
    return coverage.main(CATALOG, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
