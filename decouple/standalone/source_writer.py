"""The global namespace of a generated Python file: imports, constants, carried definitions, helpers.

Why: an exported file must import and run with torch alone (no decouple, torchvision or user
package). Every global name its code uses is therefore imported from torch or the standard
library, or the definition's own source is carried into the file (decouple helpers, user
classes and functions, with what they use in turn, found from their bytecode and syntax tree).
Anything else (numpy, a lambda, an object without source) is an :class:`ExportError` that names it.
"""

from __future__ import annotations

import ast
import builtins
import copy
import dis
import importlib
import inspect
import math
import os
import sys
import textwrap
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ExportError

__all__ = ["SourceWriter", "quote"]

_HELPERS = {
    "_parameter": '''
def _parameter(shape: tuple[int, ...], dtype: torch.dtype, requires_grad: bool = True) -> nn.Parameter:
    """An uninitialised parameter; ``load()`` fills it from the weights file."""
    return nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=requires_grad)
''',
    "_restore": '''
def _restore(cls: type, attributes: dict) -> nn.Module:
    """An instance of ``cls`` holding ``attributes``, built without running its ``__init__``."""
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.__dict__.update(attributes)
    return module
''',
}


def _allowed(module_name: str) -> bool:
    root = module_name.split(".")[0]
    return root == "torch" or root in sys.stdlib_module_names


def _locate(obj: Any) -> tuple[str, str] | None:
    """``(module, attribute path)`` importing ``obj`` from torch or the standard library, if any."""
    if isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return "torch", f"ops.{obj}"
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str) or not _allowed(module):
        return None
    if module == "builtins" and isinstance(obj, type):  # types.FunctionType and friends live in ``types``
        named = [k for k, v in vars(types).items() if v is obj and not k.startswith("_")]
        if named:
            return "types", named[0]
    paths = [p for p in (getattr(obj, "__qualname__", None), getattr(obj, "__name__", None)) if isinstance(p, str)]
    for name in dict.fromkeys([module.lstrip("_"), module]):
        try:
            found: Any = importlib.import_module(name)
        except ImportError:
            continue
        for path in paths:
            target = found
            for part in path.split("."):
                target = getattr(target, part, None)
            if target is obj:
                return name, path
    return None


def _global_names(code: types.CodeType) -> Iterator[str]:
    """Names a code object (and the code nested in it) reads as globals."""
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            yield instruction.argval
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


def _definition_names(node: ast.AST) -> Iterator[str]:
    """Names read when a ``def`` or ``class`` statement runs: decorators, bases, defaults, class body."""
    parts: list[ast.AST] = []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        parts += [*node.decorator_list, *node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]
    elif isinstance(node, ast.ClassDef):
        parts += [*node.decorator_list, *node.bases, *node.keywords]
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield from _definition_names(stmt)
            elif not isinstance(stmt, ast.AnnAssign):
                parts.append(stmt)
            elif stmt.value is not None:
                parts.append(stmt.value)
    for part in parts:
        for sub in ast.walk(part):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                yield sub.id


def _functions_of(obj: Any) -> Iterator[types.FunctionType]:
    """A function itself, or every function defined in a class body (nested classes included)."""
    if inspect.isfunction(obj):
        yield obj
        return
    for value in vars(obj).values():
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            yield from (f for f in (value.fget, value.fset, value.fdel) if inspect.isfunction(f))
        elif inspect.isfunction(value):
            yield value
        elif inspect.isclass(value) and value.__qualname__.startswith(obj.__qualname__ + "."):
            yield from _functions_of(value)


class SourceWriter:
    """The global namespace of one generated file: imports, constants, carried definitions, helpers."""

    def __init__(self) -> None:
        self.imports: dict[str, None] = {"import os": None, "import torch": None, "from torch import nn": None}
        self.constants: list[str] = []
        self.definitions: list[str] = []
        self.helpers: dict[str, None] = {}
        self.bound: dict[str, Any] = {"os": os, "torch": torch, "nn": nn}

    # -- transactions (a rejected constructor leaves nothing behind) ------------------------
    def checkpoint(self) -> tuple[Any, ...]:
        return tuple(
            copy.copy(part) for part in (self.imports, self.constants, self.definitions, self.helpers, self.bound)
        )

    def rollback(self, state: tuple[Any, ...]) -> None:
        self.imports, self.constants, self.definitions, self.helpers, self.bound = (copy.copy(part) for part in state)

    # -- names ------------------------------------------------------------------------------
    def bind(self, name: str, obj: Any) -> None:
        """Make global ``name`` of the generated file evaluate to (an equivalent of) ``obj``."""
        if name in self.bound:
            if self.bound[name] is obj or (_is_plain(obj) and self.bound[name] == obj):
                return
            raise ExportError(
                f"two different objects are both named {name!r} in the exported code ({self.bound[name]!r} and "
                f"{obj!r}); rename one of them"
            )
        if isinstance(obj, types.ModuleType):
            self._bind_module(name, obj)
        elif _is_plain(obj) or type(obj) in _DATA_TYPES:
            self.constants.append(f"{name} = {self.literal(obj, name)}")
            self.bound[name] = obj
        elif obj is type(None):
            self.bound[name] = obj
            self.constants.append(f"{name} = type(None)")
        elif getattr(builtins, name, None) is obj:
            self.bound[name] = obj
        elif (place := _locate(obj)) is not None:
            self.bound[name] = obj
            module, path = place
            if path == name:
                self.imports[f"from {module} import {name}"] = None
            else:
                self.imports[f"import {module}"] = None
                self.constants.append(f"{name} = {module}.{path}")
        elif inspect.isfunction(obj) or inspect.isclass(obj):
            self._carry(obj)
            if name != obj.__name__:
                self.bound[name] = obj
                self.definitions.append(f"{name} = {obj.__name__}\n")
        else:
            raise ExportError(
                f"the exported code uses {name!r}, a {type(obj).__name__} that cannot be written as source"
            )

    def _bind_module(self, name: str, module: types.ModuleType) -> None:
        if not _allowed(module.__name__):
            raise ExportError(
                f"the exported code uses module {module.__name__!r}; exported code may import only torch and the "
                "standard library: move the code that needs it out of the model's forward"
            )
        self.bound[name] = module
        parent, _, leaf = module.__name__.rpartition(".")
        if name == module.__name__:
            self.imports[f"import {name}"] = None
        elif parent and name == leaf:
            self.imports[f"from {parent} import {leaf}"] = None
        else:
            self.imports[f"import {module.__name__} as {name}"] = None

    def reference(self, obj: Any) -> str:
        """An expression for a function or class: ``nn.Conv2d``, ``torch.nn.functional.relu``, or a carried name."""
        name = getattr(obj, "__name__", "")
        if isinstance(obj, type) and getattr(nn, name, None) is obj:
            return f"nn.{name}"
        if getattr(torch, name, None) is obj and not isinstance(obj, types.ModuleType):
            return f"torch.{name}"
        place = _locate(obj)
        if place is not None:
            module, path = place
            if module != "torch":
                self.imports[f"import {module}"] = None
            return f"{module}.{path}"
        self.bind(name, obj)
        return name

    def literal(self, value: Any, where: str) -> str:
        """Python source that evaluates to ``value`` (plain data, dtypes, devices, functions, classes)."""
        if type(value) is str:
            return quote(value)
        if value is None or type(value) in (bool, int, bytes, complex):
            return repr(value)
        if type(value) is float:
            return repr(value) if math.isfinite(value) else f'float("{value}")'
        if isinstance(value, torch.dtype):
            return str(value)
        if isinstance(value, torch.device):
            return f"torch.device({str(value)!r})"
        if isinstance(value, torch.Size):
            return f"torch.Size({list(value)!r})"
        if type(value) is tuple:
            items = [self.literal(v, where) for v in value]
            return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
        if type(value) is list:
            return f"[{', '.join(self.literal(v, where) for v in value)}]"
        if type(value) in (set, frozenset):
            members = ", ".join(sorted(self.literal(v, where) for v in value))
            return f"{type(value).__name__}([{members}])"
        if type(value) is dict:
            return (
                "{" + ", ".join(f"{self.literal(k, where)}: {self.literal(v, where)}" for k, v in value.items()) + "}"
            )
        if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
            return self.reference(value)
        raise ExportError(f"{where} holds a {type(value).__name__}, which cannot be written as source")

    # -- carried definitions ----------------------------------------------------------------
    def _carry(self, obj: Any) -> None:
        """Copy the source of a function or class into the file, after what it needs."""
        where = f"{obj.__module__}.{obj.__qualname__}"
        if obj.__qualname__ != obj.__name__ or not obj.__name__.isidentifier():
            raise ExportError(
                f"{where} is defined inside a function or class, so its source cannot be carried; define it at module level"
            )
        try:
            source = textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError) as exc:
            raise ExportError(f"the source of {where} is not available ({exc}); define it in a .py file") from exc
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or not _allowed(node.module or "")):
                raise ExportError(
                    f"{where} imports from {'.' * node.level}{node.module or ''}; exported code may import only torch and the standard library"
                )
            if isinstance(node, ast.Import) and not all(_allowed(a.name) for a in node.names):
                raise ExportError(
                    f"{where} imports {', '.join(a.name for a in node.names)}; exported code may import only torch and the standard library"
                )
        self._reserve(obj)
        namespace = obj.__globals__ if inspect.isfunction(obj) else vars(sys.modules[obj.__module__])
        names = {n for f in _functions_of(obj) for n in _global_names(f.__code__)}
        names |= set(_definition_names(tree.body[0]))
        for name in sorted(names):
            if name in namespace and name != obj.__name__:
                self.bind(name, namespace[name])
        self.definitions.append(source.rstrip() + "\n")

    def _reserve(self, obj: Any) -> None:
        if obj.__name__ in self.bound and self.bound[obj.__name__] is not obj:
            raise ExportError(
                f"two different definitions are named {obj.__name__!r} in the exported code; rename one of them"
            )
        self.bound[obj.__name__] = obj

    def prelude(self) -> str:
        """Imports, constants, carried definitions and helpers, in that order."""
        imports = sorted(self.imports, key=lambda line: (line.startswith("from"), line))
        blocks = ["\n".join(imports)]
        if self.constants:
            blocks.append("\n".join(self.constants))
        blocks += [d.rstrip() for d in self.definitions]
        blocks += [_HELPERS[h].strip() for h in self.helpers]
        return "\n\n\n".join(blocks)


_DATA_TYPES = (tuple, list, dict, set, frozenset, torch.dtype, torch.device, torch.Size)


def _is_plain(value: Any) -> bool:
    return value is None or type(value) in (bool, int, float, str, bytes, complex)


def quote(text: str) -> str:
    """A string literal, in double quotes where that needs no escaping (as black writes them)."""
    literal = repr(text)
    if literal.startswith("'") and '"' not in text:
        return '"' + literal[1:-1] + '"'
    return literal
