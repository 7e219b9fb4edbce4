"""Standalone Python source for a module: its class, the constructors of its submodules, and what its code uses.

Why this is more than ``GraphModule.to_folder``: an exported file must import and run with torch
alone (no decouple, torchvision or user package) and load its weights with
``torch.load(weights_only=True)``; ``to_folder`` pickles every submodule it cannot print, which
needs the original classes and full unpickling. Here every global name the code uses is imported
from torch or the standard library, or its definition's own source is carried into the file
(decouple helpers, user classes, found recursively). Each submodule is rebuilt by the most
readable expression that reproduces it: its constructor as its ``repr`` prints it
(``nn.Conv2d(3, 64, kernel_size=(3, 3), ...)``), a constructor call from its attributes, or an
instance restored from its attributes without running ``__init__``; the first two are checked
against the original (type, attributes, parameter and buffer shapes) before they are used.
"""

from __future__ import annotations

import ast
import builtins
import copy
import dis
import importlib
import inspect
import keyword
import math
import os
import re
import sys
import textwrap
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .errors import ExportError

__all__ = ["SourceWriter", "module_source"]

_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_CONTAINERS: dict[type, str] = {
    nn.Module: "nn.Module()",
    nn.Sequential: "nn.Sequential()",
    nn.ModuleList: "nn.ModuleList()",
    nn.ModuleDict: "nn.ModuleDict()",
}

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
        return tuple(copy.copy(part) for part in (self.imports, self.constants, self.definitions, self.helpers, self.bound))

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
        elif _is_plain(obj):
            self.bound[name] = obj
            self.constants.append(f"{name} = {self.literal(obj, name)}")
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
            raise ExportError(f"the exported code uses {name!r}, a {type(obj).__name__} that cannot be written as source")

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
            return _quote(value)
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
            items = ", ".join(sorted(self.literal(v, where) for v in value))
            return f"{type(value).__name__}([{items}])"
        if type(value) is dict:
            return "{" + ", ".join(f"{self.literal(k, where)}: {self.literal(v, where)}" for k, v in value.items()) + "}"
        if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
            return self.reference(value)
        raise ExportError(f"{where} holds a {type(value).__name__}, which cannot be written as source")

    # -- carried definitions ----------------------------------------------------------------
    def _carry(self, obj: Any) -> None:
        """Copy the source of a function or class into the file, after what it needs."""
        where = f"{obj.__module__}.{obj.__qualname__}"
        if obj.__qualname__ != obj.__name__ or not obj.__name__.isidentifier():
            raise ExportError(f"{where} is defined inside a function or class, so its source cannot be carried; define it at module level")
        try:
            source = textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError) as exc:
            raise ExportError(f"the source of {where} is not available ({exc}); define it in a .py file") from exc
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or not _allowed(node.module or "")):
                raise ExportError(f"{where} imports from {'.' * node.level}{node.module or ''}; exported code may import only torch and the standard library")
            if isinstance(node, ast.Import) and not all(_allowed(a.name) for a in node.names):
                raise ExportError(f"{where} imports {', '.join(a.name for a in node.names)}; exported code may import only torch and the standard library")
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
            raise ExportError(f"two different definitions are named {obj.__name__!r} in the exported code; rename one of them")
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


def _is_plain(value: Any) -> bool:
    return value is None or type(value) in (bool, int, float, str, bytes, complex)


# ---------------------------------------------------------------------------------------------
# Module trees


def _quote(text: str) -> str:
    """A string literal, in double quotes where that needs no escaping (as black writes them)."""
    literal = repr(text)
    if literal.startswith("'") and '"' not in text:
        return '"' + literal[1:-1] + '"'
    return literal


def _is_name(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


def _owner(path: str) -> str:
    if not path:
        return "self"
    if all(_is_name(p) for p in path.split(".")):
        return "self." + path
    return f"self.get_submodule({_quote(path)})"


def _assign(path: str, value: str, *, module: bool = True) -> str:
    """``self.a.b = value``, or ``add_module`` / ``setattr`` where a name is not an identifier (``"0"``)."""
    parent, _, name = path.rpartition(".")
    if _is_name(name):
        return f"{_owner(parent)}.{name} = {value}"
    if module:
        return f"{_owner(parent)}.add_module({_quote(name)}, {value})"
    return f"setattr({_owner(parent)}, {_quote(name)}, {value})"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _signature(module: nn.Module) -> tuple[Any, ...]:
    """What a rebuilt module must share with the original: type, attributes, parameter and buffer specs."""
    attrs = {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS}
    params = [(n, None if p is None else (tuple(p.shape), p.dtype, p.requires_grad)) for n, p in module._parameters.items()]
    buffers = [(n, None if b is None else (tuple(b.shape), b.dtype)) for n, b in module._buffers.items()]
    return type(module), attrs, params, buffers, sorted(module._non_persistent_buffers_set)


def _reproduces(expr: str, module: nn.Module, writer: SourceWriter) -> bool:
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            rebuilt = eval(expr, {"torch": torch, "nn": nn, **writer.bound})  # noqa: S307 - our own generated text
    except Exception:
        return False
    if not isinstance(rebuilt, nn.Module):
        return False
    mine, theirs = _signature(rebuilt), _signature(module)
    if mine[0] is not theirs[0] or mine[2:] != theirs[2:] or mine[1].keys() != theirs[1].keys():
        return False
    return all(_same(mine[1][k], theirs[1][k]) for k in mine[1])


def _constructors(module: nn.Module, writer: SourceWriter, where: str) -> Iterator[str]:
    """Candidate constructor expressions for a module without children, most readable first."""
    cls = type(module)
    try:
        printed = f"{writer.reference(cls)}({module.extra_repr()})"
        ast.parse(printed, mode="eval")
        yield printed
    except (SyntaxError, ExportError):
        pass
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return
    args = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in vars(module) and p.kind is not p.POSITIONAL_ONLY:
            try:
                args.append(f"{p.name}={writer.literal(vars(module)[p.name], where)}")
            except ExportError:
                return
        elif p.default is p.empty:
            return
    yield f"{writer.reference(cls)}({', '.join(args)})"


def _restored(module: nn.Module, writer: SourceWriter, where: str) -> str:
    attrs = {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS}
    items = ", ".join(f"{_quote(k)}: {writer.literal(v, f'{where}.{k}')}" for k, v in attrs.items())
    writer.helpers["_restore"] = None
    return f"_restore({writer.reference(type(module))}, {{{items}}})"


class _TreeWriter:
    """Statements of ``__init__`` that rebuild a module tree in pre-order, then re-tie shared tensors."""

    def __init__(self, writer: SourceWriter) -> None:
        self.writer = writer
        self.lines: list[str] = []
        self.module_paths: dict[int, str] = {}

    def root(self, module: nn.Module) -> list[str]:
        self.module_paths[id(module)] = ""
        self._tensors(module, "")
        for name, child in module.named_children():
            self._module(child, name)
        self._ties(module)
        return self.lines

    def _module(self, module: nn.Module, path: str) -> None:
        if id(module) in self.module_paths:
            self.lines.append(_assign(path, f"self.get_submodule({_quote(self.module_paths[id(module)])})"))
            return
        self.module_paths[id(module)] = path
        children = list(module.named_children())
        expr = None
        if not children:
            for candidate in self._checked(module, path):
                expr = candidate
                break
        elif type(module) in _CONTAINERS:
            expr = _CONTAINERS[type(module)]
        if expr is not None:
            self.lines.append(_assign(path, expr))
            if children:
                self._tensors(module, path)
        else:
            self.lines.append(_assign(path, _restored(module, self.writer, path)))
            self._tensors(module, path)
        for name, child in children:
            self._module(child, _join(path, name))

    def _checked(self, module: nn.Module, path: str) -> Iterator[str]:
        for candidate in _constructors(module, self.writer, path):
            state = self.writer.checkpoint()
            if _reproduces(candidate, module, self.writer):
                yield candidate
                return
            self.writer.rollback(state)

    def _tensors(self, module: nn.Module, path: str) -> None:
        owner = _owner(path)
        for name, p in module._parameters.items():
            if p is None:
                self.lines.append(f"{owner}.register_parameter({_quote(name)}, None)")
                continue
            self.writer.helpers["_parameter"] = None
            grad = "" if p.requires_grad else ", requires_grad=False"
            self.lines.append(f"{owner}.register_parameter({_quote(name)}, _parameter({tuple(p.shape)!r}, {p.dtype}{grad}))")
        for name, b in module._buffers.items():
            value = "None" if b is None else f"torch.empty({tuple(b.shape)!r}, dtype={b.dtype})"
            self.lines.append(f"{owner}.register_buffer({_quote(name)}, {value})")

    def _ties(self, root: nn.Module) -> None:
        first: dict[int, str] = {}
        for kind, items in (("parameter", root.named_parameters(remove_duplicate=False)), ("buffer", root.named_buffers(remove_duplicate=False))):
            for path, tensor in items:
                if id(tensor) in first:
                    self.lines.append(_assign(path, f"self.get_{kind}({_quote(first[id(tensor)])})", module=False))
                else:
                    first[id(tensor)] = path


def _forward_source(gm: fx.GraphModule, writer: SourceWriter) -> str:
    code = gm.graph.python_code(root_module="self")
    for name, obj in code.globals.items():
        if re.search(rf"\b{re.escape(name)}\b", code.src):
            writer.bind(name, obj)
    body = code.src.strip("\n")
    return textwrap.indent(body.rstrip(), "    ")


def module_source(module: nn.Module, class_name: str, *, file_doc: str, class_doc: str, footer: str = "") -> str:
    """The text of a Python file defining ``class_name``, a standalone rebuild of ``module``.

    An ``fx.GraphModule`` keeps its generated ``forward``; another module gets its children and
    tensors only (a container of heads). ``footer`` is appended (e.g. a ``load()`` function).
    """
    writer = SourceWriter()
    writer.bound[class_name] = object()  # reserve the class name
    init = _TreeWriter(writer).root(module)
    forward = _forward_source(module, writer) if isinstance(module, fx.GraphModule) else ""
    body = "\n".join(["    def __init__(self) -> None:", "        super().__init__()", *("        " + line for line in init)])
    klass = f"class {class_name}(nn.Module):\n" + textwrap.indent(f'"""{class_doc}"""', "    ") + "\n\n" + body
    if forward:
        klass += "\n\n" + forward
    parts = [writer.prelude(), klass] + ([footer.strip()] if footer else [])
    head = f'"""{file_doc}"""\n\nfrom __future__ import annotations\n\n'
    return head + "\n\n\n".join(p.rstrip() for p in parts) + "\n"
