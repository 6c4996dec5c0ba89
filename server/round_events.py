"""In-process wake-ups between the API and the round coordinator that share one state store.

Why: the coordinator used to poll the store for its round's answers and every long-polling
agent re-read the store for tasks, each on a timer (bench sections 4-6, issue 14 §6: the
polls were the floor of a round's latency and, reading every stored envelope on each poll, the
reason it grew linearly with the number of agents). The writer now says what it wrote:

* :meth:`RoundEvents.tasks_issued` after a round's tasks are committed wakes every waiting
  long-poll (each re-checks the store for *its* task; a version counter read **before** that
  check means a task issued in between is never slept through);
* :meth:`RoundEvents.submitted` after a group commit wakes the coordinator of that round with
  the agents that answered, and hands over the envelopes the API verified
  (:meth:`RoundEvents.take_verified`), so their signatures are not verified a second time.

The store stays the truth: a waiter that times out re-reads it (writers in another process
are still seen, only later), and an envelope not handed over here (a restart, an eviction) is
read back from the store and verified there as before. The verified envelopes are bounded
(:data:`VERIFIED_MAX_BYTES` of ciphertext; the oldest is dropped first) because rounds nobody
collects must not hold memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from crypto.envelope import Envelope

VERIFIED_MAX_BYTES = 64 * 2**20  # ~190 envelopes of 64 scores (331 KB each); older ones fall back to the store


@dataclass(frozen=True)
class Verified:
    """An envelope whose signature, binding, freshness and nonce the API checked before committing it."""

    agent: str
    envelope_sha256: str
    envelope: Envelope

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.envelope.ciphertexts) + 8 * len(self.envelope.scores or ())


class RoundEvents:
    """Task and submission notifications of one :class:`~server.state.StateStore` (thread-safe; see the module)."""

    def __init__(self, *, verified_max_bytes: int = VERIFIED_MAX_BYTES) -> None:
        self._cond = threading.Condition()
        self._task_version = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._answered: dict[str, set[str]] = {}
        self._verified: OrderedDict[str, Verified] = OrderedDict()
        self._verified_bytes, self._verified_max = 0, verified_max_bytes

    # -- tasks -> long-polls ------------------------------------------------------------------------
    @property
    def task_version(self) -> int:
        """Read before checking the store; :meth:`wait_tasks` returns at once if tasks were issued since."""
        with self._cond:
            return self._task_version

    def tasks_issued(self) -> None:
        """Tasks were committed (or the server is stopping): wake every long-poll to re-check."""
        with self._cond:
            self._task_version += 1
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed; its request is gone
                loop.call_soon_threadsafe(event.set)

    async def wait_tasks(self, since: int, timeout: float) -> None:
        """Sleep until tasks are issued after version ``since``, or ``timeout`` seconds."""
        event = asyncio.Event()
        key = (asyncio.get_running_loop(), event)
        with self._cond:
            if self._task_version != since:
                return
            self._waiters.add(key)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._cond:
                self._waiters.discard(key)

    # -- submissions -> the coordinator ---------------------------------------------------------------
    def open_round(self, round_id: str) -> None:
        """Start counting answers for ``round_id`` (the coordinator, before its tasks are visible)."""
        with self._cond:
            self._answered.setdefault(round_id, set())

    def submitted(self, accepted: Iterable[tuple[str, Verified]]) -> None:
        """``(round_id, verified envelope)`` pairs were committed: remember them, wake the rounds' coordinators."""
        with self._cond:
            for round_id, item in accepted:
                answered = self._answered.get(round_id)
                if answered is None:  # no coordinator of this process waits for it: nothing to hand over
                    continue
                answered.add(item.agent)
                self._verified[item.envelope.task_id] = item
                self._verified_bytes += item.size
            while self._verified_bytes > self._verified_max and self._verified:
                _, dropped = self._verified.popitem(last=False)
                self._verified_bytes -= dropped.size
            self._cond.notify_all()

    def wait_answers(self, round_id: str, asked: Iterable[str], timeout: float) -> set[str]:
        """Agents of ``asked`` known to have answered ``round_id``; returns when all have, or after ``timeout``."""
        wanted = set(asked)
        with self._cond:
            self._cond.wait_for(lambda: wanted <= self._answered.get(round_id, set()), timeout=max(0.0, timeout))
            return set(self._answered.get(round_id, set()))

    def take_verified(self, task_id: str, envelope_sha256: str) -> Verified | None:
        """The envelope the API verified for ``task_id`` if it is the stored one (same digest); removed from memory."""
        with self._cond:
            item = self._verified.pop(task_id, None)
            if item is not None:
                self._verified_bytes -= item.size
        return item if item is not None and item.envelope_sha256 == envelope_sha256 else None

    def close_round(self, round_id: str) -> None:
        """The round is over: forget its answers and any envelope of it still held (a late one)."""
        with self._cond:
            self._answered.pop(round_id, None)
            for task_id in [t for t, item in self._verified.items() if item.envelope.round_id == round_id]:
                self._verified_bytes -= self._verified.pop(task_id).size
