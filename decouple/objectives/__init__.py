"""Local objectives: what each stage learns from, with the pools, heads and losses they are made of.

``base.py`` (the :class:`LocalObjective` API and :class:`LocalResult`), ``pools.py``
(representation to vector), ``heads.py`` (projectors, MLPs), ``losses.py`` (SupCon, task loss,
target checks), and one module per built-in objective.
"""

from .associated import AssociatedObjective
from .base import LocalObjective, LocalResult
from .early_exit import ExitObjective
from .losses import default_task_loss, logits_of, supcon_loss
from .supcon import SupConObjective
from .task import TaskObjective

__all__ = [
    "LocalObjective",
    "LocalResult",
    "SupConObjective",
    "TaskObjective",
    "ExitObjective",
    "AssociatedObjective",
    "supcon_loss",
    "default_task_loss",
    "logits_of",
]
