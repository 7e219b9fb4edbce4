"""Importing a Python source file by path, under a module name of its own (users' model files, exported modules)."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

__all__ = ["import_path"]


def import_path(path: str | os.PathLike[str], name: str, *, keep: bool = True) -> ModuleType:
    """Run the file at ``path`` as module ``name`` and return it; its exceptions propagate.

    The module is in ``sys.modules`` while it runs (dataclasses and pickling look classes up by module
    name); it stays there afterwards when ``keep``, and never when running it failed.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{os.fspath(path)!r} is not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    if not keep:
        sys.modules.pop(name, None)
    return module
