"""Rate-limited repetitive log lines: a flood of identical lines must not become a disk-filling attack.

Why: one condition an outsider can provoke (a full file-descriptor table, a stream of bad
handshakes or malformed requests) used to write the same line, traceback included, thousands
of times a second — tens of MB within seconds, on the disk the audit log shares. The first
:data:`BURST` lines of a kind per :data:`WINDOW_S` pass unchanged; the rest are counted, and
the next line of that kind to pass says how many were left out, so nothing is hidden silently.

A "kind" is the logger, the level and the message *template* (``record.msg`` before its
arguments are filled in), so the same complaint about many different peers counts as one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

BURST = 20
WINDOW_S = 10.0
MAX_KINDS = 512  # bounded memory even when messages are built without a template (f-strings)
LIMITED_LOGGERS = ("asyncio", "uvicorn", "uvicorn.error", "mor.server.connections")


class RepeatLimiter(logging.Filter):
    """Passes at most ``burst`` records of one kind per ``window_s`` seconds; counts the rest."""

    def __init__(self, burst: int = BURST, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # kind -> [window start, passed, suppressed]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_repeat_judged", False):  # already let through by this limiter on its logger
            return True
        record._repeat_judged = True
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            window = self._kinds.get(kind)
            if window is None or now - window[0] >= self.window_s:
                suppressed = int(window[2]) if window is not None else 0
                if window is None and len(self._kinds) >= MAX_KINDS:
                    self._forget_expired(now)
                self._kinds[kind] = [now, 1, 0]
                if suppressed:
                    record.msg = f"{record.msg} [{suppressed} more like this in the previous " \
                                 f"{self.window_s:.0f} s were not logged]"
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            return False

    def _forget_expired(self, now: float) -> None:
        for kind in [k for k, w in self._kinds.items() if now - w[0] >= self.window_s and not w[2]]:
            del self._kinds[kind]
        if len(self._kinds) >= MAX_KINDS:
            self._kinds.clear()


def install_repeat_limiter(loggers: Iterable[str] = LIMITED_LOGGERS, *, root_handlers: bool = True) -> RepeatLimiter:
    """One limiter on ``loggers`` and (``root_handlers``) on every handler of the root logger; idempotent.

    On the root handlers it covers every logger that propagates there; on the named loggers it
    covers them even when they log through handlers of their own (uvicorn configures some).
    """
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in loggers]
    if root_handlers:
        targets.extend(logging.getLogger().handlers)
    existing = next((f for t in targets for f in t.filters if isinstance(f, RepeatLimiter)), None)
    limiter = existing if existing is not None else RepeatLimiter()
    for target in targets:
        if not any(isinstance(f, RepeatLimiter) for f in target.filters):
            target.addFilter(limiter)
    return limiter
