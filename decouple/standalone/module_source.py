"""Python source that rebuilds a module: its class, the constructors of its submodules, its tensors.

Why this is more than ``GraphModule.to_folder``: ``to_folder`` pickles every submodule it cannot
print, which needs the original classes and full unpickling, and its weights do not load with
``torch.load(weights_only=True)``. Here each submodule is rebuilt by the most readable expression
that reproduces it: its constructor as its ``repr`` prints it (``nn.Conv2d(3, 64, kernel_size=(3,
3), ...)``), a constructor call from its attributes, or an instance restored from its attributes
without running ``__init__``; the first two are checked against the original (type, attributes,
parameter and buffer shapes) before they are used. Parameters and buffers are declared empty and
filled by the file's ``load()``; weights shared by two names stay shared.
"""

from __future__ import annotations

import ast
import inspect
import keyword
import re
import textwrap
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ExportError
from .source_writer import SourceWriter, quote

__all__ = ["module_source"]

_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_CONTAINERS: dict[type, str] = {
    nn.Module: "nn.Module()",
    nn.Sequential: "nn.Sequential()",
    nn.ModuleList: "nn.ModuleList()",
    nn.ModuleDict: "nn.ModuleDict()",
}


def _is_name(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


def _owner(path: str) -> str:
    if not path:
        return "self"
    if all(_is_name(p) for p in path.split(".")):
        return "self." + path
    return f"self.get_submodule({quote(path)})"


def _assign(path: str, value: str, *, module: bool = True) -> str:
    """``self.a.b = value``, or ``add_module`` / ``setattr`` where a name is not an identifier (``"0"``)."""
    parent, _, name = path.rpartition(".")
    if _is_name(name):
        return f"{_owner(parent)}.{name} = {value}"
    if module:
        return f"{_owner(parent)}.add_module({quote(name)}, {value})"
    return f"setattr({_owner(parent)}, {quote(name)}, {value})"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _same(a: Any, b: Any) -> bool:
    """Equal attributes; tensors (e.g. an LSTM's ``_flat_weights``) compare by shape and dtype."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, weakref.ref) and isinstance(b, weakref.ref):
        return _same(a(), b())
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _signature(module: nn.Module) -> tuple[Any, ...]:
    """What a rebuilt module must share with the original: type, attributes, parameter and buffer specs."""
    attrs = {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS}
    params = [
        (n, None if p is None else (tuple(p.shape), p.dtype, p.requires_grad)) for n, p in module._parameters.items()
    ]
    buffers = [(n, None if b is None else (tuple(b.shape), b.dtype)) for n, b in module._buffers.items()]
    return type(module), attrs, params, buffers, sorted(module._non_persistent_buffers_set)


def _reproduces(expr: str, module: nn.Module, writer: SourceWriter) -> bool:
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            rebuilt = eval(expr, {"torch": torch, "nn": nn, **writer.bound})  # our own generated text
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
    items = ", ".join(f"{quote(k)}: {writer.literal(v, f'{where}.{k}')}" for k, v in attrs.items())
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
            self.lines.append(_assign(path, f"self.get_submodule({quote(self.module_paths[id(module)])})"))
            return
        self.module_paths[id(module)] = path
        children = list(module.named_children())
        expr = None
        if not children:
            expr = self._checked(module, path)
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

    def _checked(self, module: nn.Module, path: str) -> str | None:
        """The first constructor expression that rebuilds ``module``; what the others bound is undone."""
        state = self.writer.checkpoint()
        for candidate in _constructors(module, self.writer, path):
            if _reproduces(candidate, module, self.writer):
                return candidate
            self.writer.rollback(state)
        return None

    def _tensors(self, module: nn.Module, path: str) -> None:
        owner = _owner(path)
        for name, p in module._parameters.items():
            if p is None:
                self.lines.append(f"{owner}.register_parameter({quote(name)}, None)")
                continue
            self.writer.helpers["_parameter"] = None
            grad = "" if p.requires_grad else ", requires_grad=False"
            self.lines.append(
                f"{owner}.register_parameter({quote(name)}, _parameter({tuple(p.shape)!r}, {p.dtype}{grad}))"
            )
        for name, b in module._buffers.items():
            value = "None" if b is None else f"torch.empty({tuple(b.shape)!r}, dtype={b.dtype})"
            self.lines.append(f"{owner}.register_buffer({quote(name)}, {value})")

    def _ties(self, root: nn.Module) -> None:
        first: dict[int, str] = {}
        for kind, items in (
            ("parameter", root.named_parameters(remove_duplicate=False)),
            ("buffer", root.named_buffers(remove_duplicate=False)),
        ):
            for path, tensor in items:
                if id(tensor) in first:
                    self.lines.append(_assign(path, f"self.get_{kind}({quote(first[id(tensor)])})", module=False))
                else:
                    first[id(tensor)] = path


def _forward_source(gm: fx.GraphModule, writer: SourceWriter) -> str:
    """The generated ``forward``, with the globals it uses bound in ``writer``.

    fx names string annotations (``x: "torch.Tensor"``) as globals; they are written back inline
    (annotations are never evaluated in the generated file).
    """
    code = gm.graph.python_code(root_module="self")
    src = code.src
    for name, obj in code.globals.items():
        pattern = rf"\b{re.escape(name)}\b"
        if not re.search(pattern, src):
            continue
        if type(obj) is str:
            src = re.sub(pattern, obj, src)
        else:
            writer.bind(name, obj)
    return textwrap.indent(src.strip("\n").rstrip(), "    ")


def module_source(module: nn.Module, class_name: str, *, file_doc: str, class_doc: str, footer: str = "") -> str:
    """The text of a Python file defining ``class_name``, a standalone rebuild of ``module``.

    An ``fx.GraphModule`` keeps its generated ``forward``; another module gets its children and
    tensors only (a container of heads). ``footer`` is appended (e.g. a ``load()`` function).
    """
    writer = SourceWriter()
    writer.bound[class_name] = object()  # reserve the class name
    init = _TreeWriter(writer).root(module)
    forward = _forward_source(module, writer) if isinstance(module, fx.GraphModule) else ""
    body = "\n".join(
        ["    def __init__(self) -> None:", "        super().__init__()", *("        " + line for line in init)]
    )
    klass = f"class {class_name}(nn.Module):\n" + textwrap.indent(f'"""{class_doc}"""', "    ") + "\n\n" + body
    if forward:
        klass += "\n\n" + forward
    parts = [writer.prelude(), klass] + ([footer.strip()] if footer else [])
    head = f'"""{file_doc}"""\n\nfrom __future__ import annotations\n\n'
    return head + "\n\n\n".join(p.rstrip() for p in parts) + "\n"
