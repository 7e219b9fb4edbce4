"""Passes over a :class:`~decouple.compiler.program.Program`, one module per method, and the method registry.

``registry.py`` (:class:`Method`, :data:`METHODS`, option checking), ``detach.py`` (no gradient
crosses a cut), ``pooling.py`` and ``masks.py`` (what a local head reads), and the methods:
``scl.py``, ``al.py``, ``early_exit.py``, ``bp.py``, with ``task.py`` (the last stage's loss).
Importing this package registers the built-in methods: each method module registers itself.
"""

# Each method module registers its method on import; this order is the order METHODS lists them.
# isort: off
from .scl import SupConOptions, attach_supcon
from .al import AssociatedOptions, attach_associated_learning
from .early_exit import ExitOptions, attach_exits
from .bp import BackpropOptions, end_to_end

# isort: on
from .detach import detach_boundaries
from .pooling import PoolOptions
from .registry import METHODS, Method, get_method, method_options, parse_options, register_method, run_passes
from .task import attach_task_loss

__all__ = [
    "Method",
    "METHODS",
    "get_method",
    "method_options",
    "parse_options",
    "register_method",
    "run_passes",
    "PoolOptions",
    "SupConOptions",
    "AssociatedOptions",
    "ExitOptions",
    "BackpropOptions",
    "detach_boundaries",
    "attach_supcon",
    "attach_associated_learning",
    "attach_exits",
    "attach_task_loss",
    "end_to_end",
]
