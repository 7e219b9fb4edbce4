"""Which modules read ``self.training`` while a model is traced: whether its two training modes can trace apart.

A traced graph depends on the training mode only through Python that reads ``module.training``:
functional dropout, auxiliary heads, stochastic depth, and in a torch.export graph every dropout
and batch norm (the flag becomes an argument of the aten op). While a trace runs, every module's
class is swapped for a subclass whose ``training`` is a property that records the read; the classes
are put back afterwards. When no module read its mode, tracing the other mode gives the same graph,
so :func:`~decouple.frontend.tracer.trace_modes` traces once.

A module whose class cannot be swapped (a scripted module) counts as read: the answer stays safe.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["recording_mode_reads", "original_class", "unrecorded"]

#: the recorder each swapped class reports to while a trace runs (one at a time: tracing is not reentrant)
_active: list[set[str]] = []
_names: dict[int, str] = {}
_subclasses: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()


def _read(self: nn.Module) -> bool:
    if _active:
        _active[-1].add(_names.get(id(self), type(self).__name__))
    return bool(self.__dict__["training"])


def _write(self: nn.Module, value: bool) -> None:
    self.__dict__["training"] = value


_PROPERTY = property(_read, _write)


def _recording_class(cls: type) -> type:
    """``cls`` with ``training`` as a recording property (same name, module and qualified name)."""
    sub = _subclasses.get(cls)
    if sub is None:
        namespace: dict[str, Any] = {
            "training": _PROPERTY,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        sub = _subclasses[cls] = type(cls.__name__, (cls,), namespace)
    return sub


def original_class(cls: type) -> type:
    """The user's class behind a recording subclass (``cls`` itself otherwise): what a trace saw while recording."""
    return cls.__bases__[0] if cls.__dict__.get("training") is _PROPERTY else cls


@contextlib.contextmanager
def recording_mode_reads(model: nn.Module) -> Iterator[set[str]]:
    """Yield the set of qualified names (``""`` for the root) of the modules whose ``training`` the block reads."""
    reads: set[str] = set()
    swapped: list[tuple[nn.Module, type]] = []
    try:
        for name, module in model.named_modules(remove_duplicate=False):
            cls = type(module)
            if cls.__dict__.get("training") is _PROPERTY:
                continue  # a module registered under two names: swapped under the first
            try:
                module.__class__ = _recording_class(cls)
            except TypeError:  # a class whose layout forbids it (scripted modules): assume it reads its mode
                reads.add(name)
                continue
            swapped.append((module, cls))
            _names[id(module)] = name
        _active.append(reads)
        yield reads
    finally:
        if _active and _active[-1] is reads:
            _active.pop()
        for module, cls in swapped:
            module.__class__ = cls
            _names.pop(id(module), None)


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Reads of ``training`` in the block are not recorded (setting a model's mode, not the model reading it:
    ``PreTrainedModel.train`` compares the old mode with the new)."""
    _active.append(set())
    try:
        yield
    finally:
        _active.pop()
