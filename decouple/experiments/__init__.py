"""Experiments built on the public API: the demo, method comparisons, bundled data sets and reference models.

``training.py`` (one run measured per epoch; :data:`RECIPES`, :data:`TEXT_RECIPES`), ``study.py`` (grids of runs and the
examples' shared flags), ``results.py`` (tables, CSV, figures), ``demo.py`` (``decouple demo``),
``datasets.py`` and ``image_data.py`` (bundled MNIST, Rotten Tomatoes and health news headlines, CIFAR through
torchvision), ``augment.py`` (batch augmentations, two-view SupCon batches), ``models.py``
(ConvNet, VGG, ResNet-18, DemoCNN). These modules import the library only through ``decouple``'s
public names, like any user code.
"""

from .training import (
    RECIPES,
    TEXT_RECIPES,
    Compute,
    RunResult,
    available_cores,
    evaluate,
    optimizer_factory,
    torch_threads,
    train_and_evaluate,
)

__all__ = [
    "RECIPES",
    "TEXT_RECIPES",
    "RunResult",
    "Compute",
    "available_cores",
    "evaluate",
    "optimizer_factory",
    "torch_threads",
    "train_and_evaluate",
]
