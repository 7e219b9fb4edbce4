"""Model specifications: the text a user types to name a model (``torchvision:resnet18``, ``pkg.mod:factory``).

A spec is ``SCHEME:NAME`` where ``SCHEME`` is a registered scheme (``torchvision``; other
integrations add theirs with :func:`register_scheme`, e.g. ``hf:BertForSequenceClassification``),
or ``MODULE:FACTORY`` where ``MODULE`` is an importable dotted module path or a ``.py`` file and
``FACTORY`` a callable returning an ``nn.Module``. Keyword arguments (``--kwargs`` on the command
line) go to the builder. Every mistake raises :class:`~decouple.errors.ConfigError` naming the fix.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch import nn

from ..errors import ConfigError, close_matches
from ..source_files import import_path

__all__ = [
    "ModelSpec",
    "Scheme",
    "SCHEMES",
    "register_scheme",
    "parse_model_spec",
    "build_model",
    "accepts_keyword",
    "import_attribute",
]

#: ``builder(name, kwargs) -> nn.Module`` for one scheme
Builder = Callable[[str, dict[str, Any]], nn.Module]

_MODULE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FORMS = (
    "'torchvision:NAME' (e.g. torchvision:resnet18), 'package.module:factory' or 'path/to/file.py:factory' "
    "(a callable returning an nn.Module)"
)


@dataclass(frozen=True)
class Scheme:
    """A family of models named ``prefix:NAME``, built by ``builder(NAME, kwargs)``."""

    prefix: str
    builder: Builder
    example: str
    summary: str


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` is a scheme prefix, or ``"factory"`` for ``module:callable``."""

    text: str
    kind: str
    target: str  # the scheme's NAME, or the module path / .py file
    name: str  # the model name within the scheme, or the factory's name

    def __str__(self) -> str:
        return self.text


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    """Make ``prefix:NAME`` specs build with ``scheme.builder`` (e.g. ``hf:`` for Hugging Face)."""
    SCHEMES[scheme.prefix] = scheme
    return scheme


def _forms() -> str:
    extra = "".join(f", '{s.prefix}:NAME' (e.g. {s.example})" for s in SCHEMES.values() if s.prefix != "torchvision")
    return _FORMS + extra


def parse_model_spec(text: str) -> ModelSpec:
    """Split ``text`` into its kind and target; raises ConfigError for malformed specs."""
    prefix, _, rest = text.partition(":")
    if prefix in SCHEMES:
        if not rest:
            raise ConfigError(f"model spec {text!r} names no model; use e.g. {SCHEMES[prefix].example}")
        return ModelSpec(text, prefix, rest, rest)
    module, sep, factory = text.rpartition(":")
    if not sep or not module or not factory:
        raise ConfigError(f"model spec {text!r} is not of a known form; use {_forms()}")
    if not module.endswith(".py") and not _MODULE_PATH.match(module):
        raise ConfigError(f"model spec {text!r}: {module!r} is neither a scheme nor a module path; use {_forms()}")
    if not factory.isidentifier():
        raise ConfigError(f"model spec {text!r}: {factory!r} is not a Python name; use {_forms()}")
    return ModelSpec(text, "factory", module, factory)


def build_model(spec: str | ModelSpec, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build the model ``spec`` names, passing ``kwargs`` to its builder."""
    parsed = parse_model_spec(spec) if isinstance(spec, str) else spec
    kwargs = dict(kwargs or {})
    if parsed.kind == "factory":
        factory = _load_factory(parsed)
        model = _call(factory, kwargs, parsed)
    else:
        model = SCHEMES[parsed.kind].builder(parsed.target, kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{parsed} returned {type(model).__name__}, not an nn.Module; point the spec at a callable that builds the model"
        )
    return model


def import_attribute(spec: ModelSpec) -> Any:
    """The object ``spec.name`` of the module (or ``.py`` file) ``spec.target``; ConfigError when it is not there."""
    module = _import(spec)
    found = getattr(module, spec.name, None)
    if found is None:
        public = [n for n in vars(module) if not n.startswith("_")]
        raise ConfigError(f"{spec.target!r} has no attribute {spec.name!r}{close_matches(spec.name, public)}")
    return found


def _load_factory(spec: ModelSpec) -> Callable[..., Any]:
    factory = import_attribute(spec)
    if not callable(factory):
        raise ConfigError(
            f"{spec.target}:{spec.name} is a {type(factory).__name__}, not a callable that returns an nn.Module"
        )
    return factory


def _import(spec: ModelSpec) -> ModuleType:
    if spec.target.endswith(".py"):
        return _import_file(spec.target)
    try:
        return importlib.import_module(spec.target)
    except ModuleNotFoundError as exc:
        schemes = (
            "" if "." in spec.target else f"; or use a registered scheme ({', '.join(f'{s}:NAME' for s in SCHEMES)})"
        )
        raise ConfigError(
            f"cannot import module {spec.target!r} ({exc}); check the spelling and that its folder is on "
            f"PYTHONPATH (or name a .py file: path/to/file.py:factory){schemes}"
        ) from exc
    except Exception as exc:
        raise ConfigError(f"importing {spec.target!r} failed: {type(exc).__name__}: {exc}") from exc


def _import_file(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise ConfigError(f"model file {path!r} does not exist; give the path of a .py file that defines the factory")
    name = "_decouple_model_" + re.sub(r"\W", "_", os.path.abspath(path))
    try:
        return import_path(path, name)
    except Exception as exc:
        raise ConfigError(f"running {path!r} failed: {type(exc).__name__}: {exc}") from exc


def _call(factory: Callable[..., Any], kwargs: dict[str, Any], spec: ModelSpec) -> Any:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"{spec} does not take these keyword arguments ({exc}); its signature is {signature}; fix --kwargs"
            ) from exc
    try:
        return factory(**kwargs)
    except Exception as exc:
        raise ConfigError(f"building {spec} failed: {type(exc).__name__}: {exc}; check --kwargs") from exc


def accepts_keyword(spec: str | ModelSpec, name: str) -> bool:
    """Whether the builder of ``spec`` takes keyword ``name`` (or any keyword, via ``**kwargs``)."""
    parsed = parse_model_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind != "factory":
        return parsed.kind == "torchvision"
    try:
        signature = inspect.signature(_load_factory(parsed))
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD or (p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in signature.parameters.values()
    )


def _torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise ConfigError(
            f"torchvision has no model {name!r}{close_matches(name, names)} "
            f"(torchvision {torchvision.__version__} has {len(names)}: see torchvision.models.list_models())"
        )
    if "weights" in kwargs and kwargs["weights"] is not None:
        raise ConfigError("torchvision models are built with weights=None (no downloads); drop 'weights' from --kwargs")
    kwargs = {k: v for k, v in kwargs.items() if k != "weights"}
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except Exception as exc:
        raise ConfigError(
            f"building torchvision:{name} with {kwargs} failed: {type(exc).__name__}: {exc}; check --kwargs"
        ) from exc


register_scheme(
    Scheme("torchvision", _torchvision, "torchvision:resnet18", "torchvision.models, built with weights=None")
)
