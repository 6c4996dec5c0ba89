"""Everything the HTTP app needs, built once and handed to :func:`server.app.create_app`.

A small frozen bundle instead of globals, so tests build an app around a temporary store,
audit log and clock, and so the app cannot reach anything it was not given. What the server
*may* hold follows the privacy mode, and only the mode object knows it: ``privacy`` (a
:class:`server.privacy_mode.PrivacyModeBehaviour`, built once at wiring) carries the key
material its mode allows — the secret key under ``ckks``, only the key holder's public
context under ``fused-only``, nothing under ``tls-only`` — and is asked, never tested by name.

``stopping`` is set by the runner when the process is asked to stop: long-polls then answer
204 at once (a :class:`StopSignal` wakes them), so uvicorn's graceful shutdown is not held up
by agents waiting for tasks. ``ingest`` is the group commit every accepted submission goes
through (:mod:`server.ingest`); long-polls wake on the store's events (:mod:`server.round_events`)
and re-read the store every ``poll_interval_s`` only to see tasks written by another process.
What the status page shows of the router comes from the state store (the trainer records the
router's weights there after each fit), so it is live and survives a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from crypto.signing import SigningKey
from server.admission import AdmissionControl
from server.errors import PrivacyModeError
from server.state import StateStore
from wire.messages import PrivacyMode

if TYPE_CHECKING:
    from server.ingest import GroupCommit
    from server.privacy_mode import PrivacyModeBehaviour

Clock = Callable[[], float]


@dataclass(frozen=True)
class ServicePolicy:
    """The slice of the consortium policy the HTTP service enforces (built from ``policies``)."""

    consortium: str
    digest: str
    privacy_mode: PrivacyMode
    max_epsilon: float
    max_delta: float
    max_body_bytes: int
    max_items: int
    requests_per_s: float
    burst: int
    score_min: float
    score_max: float
    out_of_range: Literal["clip", "refuse"]
    allowed_identities: frozenset[str] | None
    public_rounds_per_agent: bool = False  # fused-only: the key holder may open public-round vectors per agent
    envelope_max_age_s: float = 300.0
    online_window_s: float = 120.0
    insecure_reasons: tuple[str, ...] = ()
    lifetime_epsilon: float | None = None  # every training a member runs, composed (None: no lifetime cap)
    accountant: str = "prv"  # the Opacus accountant that composes them
    quarantine_after_failures: int = 3  # consecutive faulty rounds before a member is left out
    quarantine_s: float = 3600.0  # and for how long  # protections the policy switches off (recorded at start-up)
    max_member_weight: float | None = None  # [fusion]: cap on any member's router weight (the trainer wraps its router)
    clip_z: float | None = None  # [fusion]: calibrated scores clipped to +-clip_z (the mode object applies it)
    aggregate: str = "weighted"  # [fusion]: weighted | trimmed | median (the mode object applies it)


@dataclass(frozen=True)
class AuditRecord:
    """Where an audit append landed: what receipts and replies cite."""

    index: int
    leaf_sha256: str


class AuditTrail(Protocol):
    """What the service needs from the audit log (:class:`server.audit_trail.AuditLogTrail` in production).

    ``checkpoint()`` and ``proof(i)`` return the ``wire.messages`` shapes (``SignedCheckpoint``,
    ``SignedInclusionProof``); ``record`` raises if the entry cannot be written — never drop it silently.
    """

    def record(self, actor: str, action: str, data: Mapping[str, Any]) -> AuditRecord: ...

    def checkpoint(self) -> dict[str, Any]: ...

    def proof(self, index: int) -> dict[str, Any]: ...

    def size(self) -> int: ...


class StopSignal(threading.Event):
    """``threading.Event`` that also runs callbacks when set: stopping wakes the waiting long-polls at once."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def on_set(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def set(self) -> None:
        super().set()
        for callback in self._callbacks:
            callback()


@dataclass(frozen=True)
class Services:
    """The app's dependencies (see the module docstring)."""

    policy: ServicePolicy
    state: StateStore
    audit: AuditTrail
    signing_key: SigningKey
    admission: AdmissionControl
    privacy: PrivacyModeBehaviour
    clock: Clock = time.time
    long_poll_max_s: float = 30.0
    poll_interval_s: float = 0.5  # long-polls wake on events; this re-read only sees other processes' tasks
    tls_cert: Path | None = None  # the server's own certificate file: the status page shows its expiry
    stopping: threading.Event = field(default_factory=StopSignal)
    ingest: GroupCommit = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from server.ingest import GroupCommit

        if self.privacy.name != self.policy.privacy_mode:
            raise PrivacyModeError(f"the policy says privacy mode {self.policy.privacy_mode}, the services were built "
                                   f"for {self.privacy.name}")
        object.__setattr__(self, "ingest", GroupCommit(state=self.state, audit=self.audit,
                                                       signing_key=self.signing_key))
        if isinstance(self.stopping, StopSignal):
            self.stopping.on_set(self.state.events.tasks_issued)
