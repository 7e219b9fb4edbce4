"""Local objectives: what each stage learns from, with the pools, heads and losses they are made of.

``base.py`` (the :class:`LocalObjective` API and :class:`LocalResult`), ``stage_info.py`` (what a
method's ``make_objective`` learns about a stage), ``pools.py`` (representation to vector),
``heads.py`` (projectors, MLPs), ``losses.py`` (SupCon, the task loss, similarity matrices, target
checks), and one module per method's objective: ``supcon.py``, ``task.py``, ``early_exit.py``
(also DGL's), ``associated.py``, ``dgl.py`` (DGL's auxiliary networks), ``predsim.py``,
``infopro.py``, ``deinfo.py``.
"""

from .associated import AssociatedExit, AssociatedObjective
from .base import LocalObjective, LocalResult
from .deinfo import DeInfoRegObjective
from .early_exit import ExitObjective
from .infopro import InfoProObjective
from .losses import default_task_loss, logits_of, similarity_matrix, supcon_loss
from .predsim import PredSimObjective
from .stage_info import StageInfo
from .supcon import SupConObjective
from .task import TaskObjective

__all__ = [
    "LocalObjective",
    "LocalResult",
    "StageInfo",
    "SupConObjective",
    "TaskObjective",
    "ExitObjective",
    "AssociatedObjective",
    "AssociatedExit",
    "PredSimObjective",
    "InfoProObjective",
    "DeInfoRegObjective",
    "supcon_loss",
    "similarity_matrix",
    "default_task_loss",
    "logits_of",
]
