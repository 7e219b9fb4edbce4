"""Export a decoupled model as readable, standalone Python source files plus weights.

What a folder holds (``k`` a stage index)::

    inference.py, inference.pt          the inference module (effective parameters only)
    stage{k}.py, stage{k}.pt            stage k's generated component, training-mode graph
    stage{k}_eval.py, stage{k}_eval.pt  its eval-mode graph, only where tracing froze mode-dependent Python
    stage{k}_heads.py, stage{k}_heads.pt  the modules of stage k's local objective (affiliated parameters)
    manifest.json                       what each file holds, with the stages' inputs and outputs

Each ``.py`` file defines one ``nn.Module`` class and ``load(path=None, map_location="cpu")``, and
imports only torch and the standard library (see :mod:`decouple.standalone.module_source` and :mod:`decouple.standalone.source_writer`); weights are plain
state dicts that load with ``torch.load(path, weights_only=True)``. Every file is imported back
and loaded strictly before :func:`export_source` returns, and with ``example_inputs`` the exported
inference module is run against the original.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from .._version import __version__
from ..codegen.stages import describe_value
from ..errors import ExportError
from ..frontend.inputs import normalize_example_inputs
from ..model import DecoupledModel
from ..source_files import import_path
from .module_source import module_source

__all__ = ["ExportedFile", "ExportResult", "export_source"]

_counter = itertools.count()


@dataclass
class ExportedFile:
    """One exported module: its source file, weights file, class and role."""

    role: str  # "inference", "stage", "stage_eval" or "heads"
    stage: int | None
    source: str
    weights: str
    class_name: str
    parameters: int
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    """What :func:`export_source` wrote; ``max_abs_diff`` compares exported and original inference outputs."""

    directory: str
    files: list[ExportedFile]
    manifest: str
    max_abs_diff: float | None = None


@dataclass
class _Job:
    role: str
    stage: int | None
    module: nn.Module
    class_name: str
    stem: str
    description: str
    training: bool
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def export_source(dm: DecoupledModel, directory: str | os.PathLike[str], *, example_inputs: Any = None) -> ExportResult:
    """Write ``dm``'s inference module, every stage module and every objective's modules to ``directory``.

    ``dm`` is a :class:`~decouple.DecoupledModel`. With ``example_inputs`` (as for ``convert``), the
    exported inference module is checked to reproduce ``dm.inference_module()`` on them.
    Raises :class:`~decouple.errors.ExportError` when a part cannot be written as standalone source.
    """
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{str(folder)!r} exists and is not a folder; export to a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(
            f"cannot create the folder {str(folder)!r} ({exc.strerror}); choose another place to export to"
        ) from exc
    inference = dm.inference_module(device="cpu")
    jobs = _jobs(dm, inference)
    files = [_write(job, dm, folder) for job in jobs]
    diff = None
    if example_inputs is not None:
        diff = _verify(inference, _load(folder / "inference.py", "inference"), example_inputs)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(_manifest(dm, files, diff), indent=2) + "\n")
    return ExportResult(str(folder), files, str(manifest), diff)


def _jobs(dm: DecoupledModel, inference: fx.GraphModule) -> list[_Job]:
    model = type(dm.program.root).__name__
    placeholders = [n.target for n in inference.graph.nodes if n.op == "placeholder"]
    jobs = [_Job("inference", None, inference, f"{model}Inference", "inference",
                 f"The inference module of {model} decoupled with method {dm.method!r}: effective parameters only.",
                 False, placeholders)]  # fmt: skip
    for stage in dm.stages:
        k = stage.index
        io = stage.io[True]
        outputs = ["output"] if io.last else list(io.outputs)
        covered = ", ".join(dm.program.stages[k].plan.modules) or "-"
        what = f"Stage {k} of {model} decoupled with method {dm.method!r} (modules: {covered})"
        jobs.append(
            _Job(
                "stage",
                k,
                stage.module,
                f"Stage{k}",
                f"stage{k}",
                f"{what}, training-mode graph.",
                True,
                list(io.inputs),
                outputs,
            )
        )
        if stage.eval_module is not stage.module:
            eval_io = stage.io[False]
            eval_outputs = ["output"] if eval_io.last else list(eval_io.outputs)
            jobs.append(_Job("stage_eval", k, stage.eval_module, f"Stage{k}Eval", f"stage{k}_eval", f"{what}, eval-mode graph.",
                             False, list(eval_io.inputs), eval_outputs))  # fmt: skip
        if stage.objective is not None and any(True for _ in stage.objective.children()):
            jobs.append(
                _Job(
                    "heads",
                    k,
                    stage.objective,
                    f"Stage{k}Heads",
                    f"stage{k}_heads",
                    _heads_description(k, stage.objective),
                    True,
                )
            )
    return jobs


def _heads_description(k: int, objective: nn.Module) -> str:
    children = [name for name, _ in objective.named_children()]
    text = (
        f"The modules of stage {k}'s local objective ({type(objective).__name__}): {', '.join(children)}. "
        "They hold its affiliated parameters; the container itself has no forward."
    )
    if {"pool", "projector"} <= set(children):
        text += " The projection of a representation h is ``heads.projector(heads.pool(h))``."
    return text


def _docstring(job: _Job, dm: DecoupledModel) -> str:
    lines = [
        job.description,
        "",
        f"Exported by decouple; needs only torch. ``load()`` builds it and reads ``{job.stem}.pt``.",
    ]
    if job.role != "heads":
        if job.stage is None:
            graph = dm.program.partitions[False].trace.graph
            shapes = {n.name: describe_value(n.meta.get("val")) for n in graph.nodes if n.op == "placeholder"}
        else:
            shapes = dict(dm.stages[job.stage].io[job.role == "stage"].shapes)
        args = ", ".join(job.inputs)
        lines += ["", f"forward({args})"]
        lines += [f"    {name}: {_describe(shapes[name])}" for name in job.inputs if name in shapes]
        if job.outputs and job.outputs != ["output"]:
            lines.append("    returns {" + ", ".join(f"{name!r}: ..." for name in job.outputs) + "}")
        if shapes:
            lines.append("(shapes are those of the example inputs the model was converted with)")
    return "\n".join(lines)


def _describe(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple) and isinstance(value[1], str):
        return f"{value[0]} {value[1]}"
    return repr(value)


def _footer(job: _Job) -> str:
    mode = "train" if job.training else "eval"
    return f'''
def load(path: str | None = None, map_location: str | torch.device = "cpu") -> {job.class_name}:
    """Build ``{job.class_name}`` and load its weights (default: ``{job.stem}.pt`` next to this file), in {mode} mode."""
    module = {job.class_name}()
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "{job.stem}.pt")
    module.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
    return module.{mode}()
'''


def _write(job: _Job, dm: DecoupledModel, folder: Path) -> ExportedFile:
    doc = _docstring(job, dm)
    text = module_source(job.module, job.class_name, file_doc=doc, class_doc=doc.splitlines()[0], footer=_footer(job))
    source = folder / f"{job.stem}.py"
    source.write_text(text)
    with torch.device("meta"):  # only the state dict's keys are needed here
        built = getattr(_load(source, job.stem), job.class_name)()
    weights = {key: _tensor_at(job.module, key).detach().cpu() for key in built.state_dict()}
    torch.save(weights, folder / f"{job.stem}.pt")
    try:
        _load(source, job.stem).load()
    except Exception as exc:  # a mismatch here is a bug in the exporter, not in the user's input
        raise ExportError(
            f"the exported {source.name} does not load its own weights ({type(exc).__name__}: {exc}); please report this"
        ) from exc
    count = sum(p.numel() for p in {id(p): p for p in job.module.parameters()}.values())
    return ExportedFile(
        job.role, job.stage, source.name, f"{job.stem}.pt", job.class_name, count, job.inputs, job.outputs
    )


def _tensor_at(module: nn.Module, key: str) -> torch.Tensor:
    owner_path, _, name = key.rpartition(".")
    owner = module.get_submodule(owner_path)
    value = getattr(owner, name)
    assert isinstance(value, torch.Tensor), f"{key} is not a tensor of {type(module).__name__}"
    return value


def _load(path: Path, stem: str) -> ModuleType:
    """Import a generated file by path, under a fresh module name."""
    try:
        return import_path(path, f"_decouple_exported_{next(_counter)}_{stem}", keep=False)
    except Exception as exc:
        raise ExportError(
            f"the exported {path.name} does not import ({type(exc).__name__}: {exc}); please report this"
        ) from exc


def _verify(reference: nn.Module, exported_module: ModuleType, example_inputs: Any) -> float:
    args, kwargs = normalize_example_inputs(example_inputs)
    args, kwargs = pytree.tree_map(lambda x: x.cpu() if isinstance(x, torch.Tensor) else x, (args, kwargs))
    exported = exported_module.load()
    with torch.no_grad():
        expected, got = reference(*args, **kwargs), exported(*args, **kwargs)
    want, want_spec = pytree.tree_flatten(expected)
    have, have_spec = pytree.tree_flatten(got)
    if want_spec != have_spec:
        raise ExportError(
            f"the exported inference module returns {have_spec}, the original {want_spec}; please report this"
        )
    diff = 0.0
    for a, b in zip(want, have):
        if not isinstance(a, torch.Tensor):
            continue
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            raise ExportError(
                f"the exported inference module returns {_summary(b)} where the original returns {_summary(a)}; please report this"
            )
        if a.numel():
            diff = max(diff, float((a.double() - b.double()).abs().max()))
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True):
            raise ExportError(
                f"the exported inference module differs from the original (max abs diff {diff:.3g}); please report this"
            )
    return diff


def _summary(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {tuple(value.shape)} {str(value.dtype).replace('torch.', '')} tensor"
    return type(value).__name__


def _manifest(dm: DecoupledModel, files: list[ExportedFile], diff: float | None) -> dict[str, Any]:
    objectives = {}
    for stage in dm.stages:
        if stage.objective is not None:
            plain = {k: v for k, v in vars(stage.objective).items() if not k.startswith("_") and k != "training"
                     and (v is None or type(v) in (bool, int, float, str))}  # fmt: skip
            objectives[str(stage.index)] = {"class": type(stage.objective).__name__, "attributes": plain}
    return {
        "format": "decouple-source/1",
        "decouple": __version__,
        "torch": torch.__version__,
        "model": type(dm.program.root).__name__,
        "method": dm.method,
        "stages": dm.num_stages,
        "files": [asdict(f) for f in files],
        "objectives": objectives,
        "inference_max_abs_diff": diff,
    }
