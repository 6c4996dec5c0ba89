"""Replay protection: each (sender, nonce) pair is accepted once.

The store only has to remember a nonce until its envelope would fail the freshness check
anyway (``expires_at``); after that the timestamp check rejects a replay on its own. The
server backs this protocol with its SQL state store; :class:`MemoryNonceStore` serves tests,
single-process simulations and agents.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class NonceStore(Protocol):
    def check_and_add(self, sender: str, nonce: str, expires_at: float) -> bool:
        """Record the nonce; return False if this sender used it before (a replay)."""
        ...


class MemoryNonceStore:
    """Thread-safe in-memory :class:`NonceStore`; forgets nonces once they have expired."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def check_and_add(self, sender: str, nonce: str, expires_at: float) -> bool:
        key = (sender, nonce)
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = expires_at
            if len(self._seen) % 1024 == 0:
                self._purge_locked(self._clock())
        return True

    def purge(self, now: float | None = None) -> int:
        """Drop expired nonces; returns how many were dropped."""
        with self._lock:
            return self._purge_locked(self._clock() if now is None else now)

    def _purge_locked(self, now: float) -> int:
        expired = [key for key, expires_at in self._seen.items() if expires_at < now]
        for key in expired:
            del self._seen[key]
        return len(expired)

    def __len__(self) -> int:
        return len(self._seen)
