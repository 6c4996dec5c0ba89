"""Memory that returns near its baseline after a wave of connections, instead of only ever growing.

Why two steps. A failed TLS handshake leaves its state (SSL object, 256 KiB read buffer) in a
reference cycle through the exception's traceback, which only a full garbage collection frees;
in a process holding a few hundred thousand long-lived objects (torch, transformers) Python
runs one only after thousands of failures, so each certificate-less wave added its buffers to
the heap. And what is freed stays in glibc's heap unless ``malloc_trim`` hands it back.
:class:`HeapReturner` does both after churn: a collection when handshakes failed (at most every
:data:`GC_INTERVAL_S`), then a trim; and again a second later while connections keep closing,
so a wave's tail is covered too.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections import Counter

from server.log_limits import install_repeat_limiter

TRIM_AFTER_CLOSES = 32  # closed connections that make returning freed memory worthwhile
TRIM_DELAY_S = 1.0  # debounce: at most about one trim a second, after the churn
GC_INTERVAL_S = 1.0  # at most one full collection this often, and only after failed handshakes

_LIBC_NAME = ctypes.util.find_library("c")
_LIBC = ctypes.CDLL(_LIBC_NAME) if _LIBC_NAME else None


def malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc; elsewhere there is nothing to call)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


class HeapReturner:
    """Told of every closed connection (event-loop thread); collects and trims after churn."""

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self._closes = self._failed_handshakes = 0
        self._pending, self._last_gc = False, 0.0

    def closed(self, *, authenticated: bool) -> None:
        self._closes += 1
        self._failed_handshakes += not authenticated
        if self._closes >= TRIM_AFTER_CLOSES and not self._pending:
            try:
                asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._return)
                self._pending = True
            except RuntimeError:  # closed outside the loop (interpreter shutdown): nothing to schedule
                pass

    def _return(self) -> None:
        if self._closes == 0:  # a whole delay without a close: the wave is over and was trimmed
            self._pending = False
            return
        self._closes = 0
        now = time.monotonic()
        if self._failed_handshakes and now - self._last_gc >= GC_INTERVAL_S:
            self._failed_handshakes, self._last_gc = 0, now
            gc.collect()
            self.stats["collections"] += 1
        malloc_trim()
        self.stats["trims"] += 1
        asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._return)


def prepare_serving_process() -> None:
    """For a whole serving process (``mor server``, ``mor keyholder``), just before it serves.

    Rate-limits repetitive log lines (:mod:`server.log_limits`), and moves every object that
    exists now (imports, app, services) out of the cyclic collector's reach (``gc.freeze``):
    the collections above then scan only what was created since, not the few hundred thousand
    objects torch and transformers import (milliseconds instead of ~0.4 s). Objects alive now
    are never cycle-collected afterwards, which is why this is for processes, not for a server
    embedded in a caller's process.
    """
    install_repeat_limiter()
    gc.collect()
    gc.freeze()
