"""The errors decouple raises for bad input.

Every user-facing error derives from :class:`DecoupleError` (itself a ``ValueError``),
names the offending value and says how to fix it. Internal invariants use ``assert``.
"""

from __future__ import annotations

import difflib
import keyword
from collections.abc import Iterable

__all__ = [
    "DecoupleError",
    "TraceError",
    "SplitError",
    "TiedParameterError",
    "TargetError",
    "ConfigError",
    "InputError",
    "ExportError",
    "StageError",
    "RankFailedError",
    "LaunchError",
    "close_matches",
    "attribute_code",
]


class DecoupleError(ValueError):
    """Base class of every error decouple raises for bad input."""


class TraceError(DecoupleError):
    """The model could not be traced into a graph."""


class SplitError(DecoupleError):
    """A split specification does not describe a valid partition of the graph."""


class TiedParameterError(DecoupleError):
    """A parameter (or a tensor computed from parameters) would be shared by two stages."""


class TargetError(DecoupleError):
    """Targets given to a training call do not fit the local objectives."""


class ConfigError(DecoupleError):
    """An option of :func:`decouple.convert` is unknown or has a bad value."""


class InputError(DecoupleError):
    """Inputs given to a converted model do not match its traced signature."""


class ExportError(DecoupleError):
    """A converted model cannot be written out as standalone Python source."""


class StageError(RuntimeError):
    """A stage failed while training; ``stage`` and ``batch`` say where.

    The original exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, stage: int, batch: int | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.batch = batch


class RankFailedError(StageError):
    """A rank of a multi-process run stopped because another rank failed, vanished or hung.

    ``stage`` and ``batch`` say where this rank was; ``failed_rank`` names the rank that failed
    first (``None`` when no rank reported an error).
    """

    def __init__(self, message: str, *, stage: int, batch: int | None = None, failed_rank: int | None = None) -> None:
        super().__init__(message, stage=stage, batch=batch)
        self.failed_rank = failed_rank


class LaunchError(RuntimeError):
    """Processes started by :func:`decouple.distributed.launch` failed.

    Chained as the ``__cause__`` of the exception re-raised from the rank that failed first;
    ``exitcodes`` maps each rank to its exit code, ``tracebacks`` to its formatted traceback.
    """

    def __init__(self, message: str, *, exitcodes: dict[int, int | None], tracebacks: dict[int, str]) -> None:
        super().__init__(message)
        self.exitcodes = exitcodes
        self.tracebacks = tracebacks


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> str:
    """Return ``"; did you mean 'a', 'b'?"`` or an empty string when nothing is close.

    Close means similar spelling (difflib) or that ``word`` starts a candidate (``temp`` for
    ``temperature``).
    """
    pool = list(candidates)
    matches = difflib.get_close_matches(word, pool, n=n, cutoff=0.6)
    if len(word) >= 3:
        matches += [c for c in pool if c.startswith(word) and c not in matches]
    if not matches:
        return ""
    return "; did you mean " + ", ".join(repr(m) for m in matches[:n]) + "?"


def attribute_code(root: str, path: str) -> str:
    """Python that reads attribute ``path`` (``"a.b.0.weight"``) of the object named ``root``, for fix texts.

    ``model.a.b.weight`` when every part is a Python name, else ``model.get_submodule("a.b.0").weight``
    (a dotted path with list indices or other names that are not identifiers is not valid Python).
    """
    parts = path.split(".")
    if all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
        return f"{root}.{path}"
    owner, attr = ".".join(parts[:-1]), parts[-1]
    if not owner:
        return f"getattr({root}, {attr!r})"
    reach = f"{root}.get_submodule({owner!r})"
    return f"{reach}.{attr}" if attr.isidentifier() and not keyword.iskeyword(attr) else f"getattr({reach}, {attr!r})"
