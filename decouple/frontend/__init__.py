"""Frontends: turn an ``nn.Module`` into a :class:`Trace` (an fx graph whose nodes know their module scope).

``fx.py`` (torch.fx), ``export.py`` (torch.export, for what fx cannot trace), ``inputs.py`` (the
input signature), ``propagate.py`` (fake-tensor shapes and FLOPs), ``pinned_dims.py`` (sizes an
exported graph pins), ``tracer.py`` (choosing a frontend, both training modes).
"""

from .inputs import InputSpec, normalize_example_inputs
from .trace import Trace, TracerName
from .tracer import TRACERS, TracerFallbackWarning, trace, trace_modes

__all__ = [
    "Trace",
    "TracerName",
    "InputSpec",
    "normalize_example_inputs",
    "TracerFallbackWarning",
    "trace",
    "trace_modes",
    "TRACERS",
]
