"""``convert(compile=True)``: each stage's module and objective through ``torch.compile``, eager when that fails.

Compilation is lazy (on the first training batch) and per stage. If compiling or running the
compiled form of either part of a stage raises, the same call is repeated eagerly: when the eager
call succeeds the stage warns once (:class:`CompileFallbackWarning`, naming the stage and the
error) and runs eagerly from then on; when it fails too, the error is the input's, not the
compiler's, and it is raised as it is. The compiled callables are not submodules (state dicts
are unchanged) and are dropped when a model is pickled (a spawned rank compiles its own).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..codegen.stage import Stage

__all__ = ["CompileFallbackWarning", "compile_stages", "StageCompilation"]


class CompileFallbackWarning(UserWarning):
    """A stage could not be compiled with ``torch.compile`` and trains eagerly."""


class StageCompilation:
    """One stage's compiled parts; after the first failure every part of the stage runs eagerly."""

    def __init__(self, index: int, options: dict[str, Any]) -> None:
        self.index = index
        self.options = dict(options)
        self.failed: str | None = None  # the error that made the stage fall back

    def wrap(self, fn: Callable[..., Any], part: str) -> _Compiled:
        return _Compiled(self, fn, part)

    def fall_back(self, part: str, exc: BaseException) -> None:
        if self.failed is not None:
            return
        cause = getattr(exc, "inner_exception", None) or exc  # a backend's own error, not dynamo's wrapper
        self.failed = f"{type(cause).__name__}: {cause}".strip()
        warnings.warn(
            f"stage {self.index}: torch.compile of its {part} failed ({self.failed.splitlines()[0]}); the stage "
            "trains eagerly",
            CompileFallbackWarning,
            stacklevel=4,
        )


class _Compiled:
    """``fn`` compiled on first use, falling back to ``fn`` itself (see the module docstring)."""

    def __init__(self, owner: StageCompilation, fn: Callable[..., Any], part: str) -> None:
        self.owner = owner
        self.fn = fn
        self.part = part
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.owner.failed is not None:
            return self.fn(*args, **kwargs)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, **self.owner.options)
            return self._compiled(*args, **kwargs)
        except Exception as exc:
            result = self.fn(*args, **kwargs)  # a fault of the inputs raises here, as it would eagerly
            self.owner.fall_back(self.part, exc)
            self._compiled = None
            return result

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_compiled": None}


def compile_stages(stages: Sequence[Stage], options: dict[str, Any] | None) -> None:
    """Route each stage's training-mode module and objective through ``torch.compile`` (``None``: eager)."""
    for stage in stages:
        if options is None:
            stage.compiled_module = stage.compiled_objective = None
            continue
        compilation = StageCompilation(stage.index, options)
        stage.compiled_module = compilation.wrap(stage.module, "module")
        stage.compiled_objective = (
            compilation.wrap(stage.objective, "objective") if stage.objective is not None else None
        )
