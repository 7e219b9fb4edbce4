"""The warnings a trace gives when it takes a fallback path: fx with extra leaf modules, torch.export, static sizes."""

from __future__ import annotations

__all__ = ["TracerFallbackWarning", "StaticSizesWarning"]


class TracerFallbackWarning(UserWarning):
    """``tracer="auto"``: torch.fx could not trace the model as asked, so it was traced another way.

    Either fx traced it again with the failing submodule's class as a leaf module (each such module
    runs as one call, and its parameters stay in one stage), or torch.export was used instead.
    """


class StaticSizesWarning(TracerFallbackWarning):
    """torch.export could not keep every input size dynamic, so the model was exported at the example's sizes.

    The converted model then checks on entry that inputs have exactly those sizes.
    """
