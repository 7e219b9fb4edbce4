"""Peak memory of a block of work: CUDA's allocator peak, or on CPU the process's peak resident size.

    with PeakMemory(device) as peak:
        ...                      # the steps to measure
    peak.bytes                   # peak over what was in use when the block started

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, over
``memory_allocated`` at the start: the bytes of live tensors, exactly, on every stream and thread.

CPU: there is no allocator counter that sees every thread (``torch.profiler``'s memory events stay
in the thread that started the profiler, so a pipeline's stage threads go unseen), so this reads
the kernel's: ``VmHWM`` (peak resident set) of this process after resetting it to the current
``VmRSS`` (``/proc/self/clear_refs``, Linux >= 4.0), over ``VmRSS`` at the start. What makes it
the tensors' peak and not the C library's: run the process with a fixed ``MALLOC_MMAP_THRESHOLD_``
(:data:`MALLOC_ENV`), so glibc serves every allocation of 128 KiB or more with its own ``mmap``
and unmaps it on ``free``: resident memory then rises and falls with the live tensors (plus the
small-object heap), instead of keeping freed tensors' pages in arenas that depend on allocation
order. Measure each configuration in a fresh process (``benchmarks/memory.py`` does), so nothing
an earlier configuration left resident counts.
"""

from __future__ import annotations

import gc
import os
from types import TracebackType

import torch

__all__ = ["PeakMemory", "MALLOC_ENV", "rss_peak_resettable"]

#: the environment of a measured CPU process: every allocation >= 128 KiB is mmapped and returned on free
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def rss_peak_resettable() -> bool:
    """Whether this system lets a process reset its peak resident size (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status("VmHWM")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak bytes in use during the ``with`` block, above what was in use when it started."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.start = 0
        self.bytes = 0
        self.total = 0  # peak including what was there at the start

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            if not rss_peak_resettable():  # resets VmHWM to the current VmRSS
                raise OSError("peak CPU memory needs Linux's /proc/self/clear_refs (resetting VmHWM)")
            self.start = _status("VmRSS")
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.total = torch.cuda.max_memory_allocated(self.device)
        else:
            self.total = _status("VmHWM")
        self.bytes = self.total - self.start


def malloc_configured() -> bool:
    """Whether this process runs with :data:`MALLOC_ENV` (glibc reads it at start-up only)."""
    return all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())
