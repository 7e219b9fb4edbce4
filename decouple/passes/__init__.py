"""Compiling a method into a :class:`~decouple.compiler.program.Program`: the passes, the method registry and the methods.

``registry.py`` (:class:`Method`, :data:`METHODS`, :func:`register_method`, option checking),
``compile.py`` (the passes every method runs, steered by its facts), ``detach.py`` (no gradient
crosses a cut), ``objectives.py`` (each stage's ``make_objective``), ``task.py`` (the last
stage's loss), ``pooling.py`` and ``masks.py`` (what a local head reads), and one module per
method: ``scl.py``, ``al.py``, ``early_exit.py``, ``bp.py``, ``dgl.py``, ``predsim.py``,
``infopro.py``, ``deinfo.py``. Each method module registers its method on import with the
public :func:`register_method`, the way a user registers one.
"""

# Each method module registers its method on import; this order is the order METHODS lists them.
# isort: off
from .scl import SupConOptions, make_supcon
from .al import AssociatedOptions, make_associated
from .early_exit import ExitOptions, make_exit
from .bp import BackpropOptions
from .dgl import DGLOptions, make_dgl
from .predsim import PredSimOptions, make_predsim
from .infopro import InfoProOptions, make_infopro
from .deinfo import DeInfoRegOptions, make_deinfo

# isort: on
from .compile import run_passes
from .detach import detach_boundaries
from .pooling import PoolOptions
from .registry import (
    METHODS,
    Method,
    ObjectiveFactory,
    method_options,
    parse_options,
    register_method,
    resolve_method,
)
from .task import attach_task_loss

__all__ = [
    "Method",
    "METHODS",
    "ObjectiveFactory",
    "resolve_method",
    "method_options",
    "parse_options",
    "register_method",
    "run_passes",
    "PoolOptions",
    "SupConOptions",
    "AssociatedOptions",
    "ExitOptions",
    "BackpropOptions",
    "DGLOptions",
    "PredSimOptions",
    "InfoProOptions",
    "DeInfoRegOptions",
    "make_supcon",
    "make_associated",
    "make_exit",
    "make_dgl",
    "make_predsim",
    "make_infopro",
    "make_deinfo",
    "detach_boundaries",
    "attach_task_loss",
]
