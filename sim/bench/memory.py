"""Peak resident memory of one call, on Linux, without a subprocess per measurement.

torch's CPU allocator bypasses Python's ``tracemalloc``, so we read the kernel's view:
writing ``5`` to ``/proc/self/clear_refs`` resets the process's peak RSS (``VmHWM``, Linux
>= 4.0); the peak during a call minus the RSS just before it is what the call needed on top
of what was already resident. Freed heap is handed back first (``malloc_trim``) so memory
cached by an earlier call is not mistaken for free room. Where any of this is unavailable the
figure is ``None`` and the report says so, rather than inventing a number.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _trim() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL(name).malloc_trim(0)


def peak_extra_mib(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """Run ``fn``; return its result and the extra peak RSS (MiB) it needed, or None if unmeasurable."""
    _trim()
    try:
        _CLEAR.write_text("5")
    except OSError:
        return fn(), None
    before = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return result, None
    return result, max(0.0, (peak - before) / 1024)
