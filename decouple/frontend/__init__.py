"""Frontends: turn an ``nn.Module`` into a :class:`Trace` (an fx graph whose nodes know their module scope).

``fx.py`` (torch.fx), ``export.py`` (torch.export, for what fx cannot trace), ``inputs.py`` (the
input signature), ``propagate.py`` (meta- or fake-tensor shapes and FLOPs), ``meta_run.py`` (running
a graph on the meta device), ``pinned_dims.py`` (sizes an exported graph pins), ``mode_reads.py``
(whether the training modes can trace apart), ``fallbacks.py`` (the warnings of fallback paths),
``tracer.py`` (choosing a frontend, the training modes).
"""

from .fallbacks import StaticSizesWarning, TracerFallbackWarning
from .inputs import InputSpec, normalize_example_inputs
from .trace import Trace, TracerName
from .tracer import TRACERS, trace, trace_modes

__all__ = [
    "Trace",
    "TracerName",
    "InputSpec",
    "normalize_example_inputs",
    "TracerFallbackWarning",
    "StaticSizesWarning",
    "trace",
    "trace_modes",
    "TRACERS",
]
