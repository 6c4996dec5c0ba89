"""What the status page reads beyond the state store: GRPO progress from the audit log, certificates' expiry.

Why from the audit log: the trainer already records every ``grpo.step`` (step, reward, KL) and
the run's plan (``training.started``: ``max_steps``) there, signed; reading them back needs no
extra state and survives a restart. Only the log's tail (:data:`_TAIL_BYTES`) is read, newest
first, so a page view costs the same on a log of millions of entries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class TrainingProgressView(BaseModel):
    """The GRPO run as the audit log last recorded it (``training.started`` and ``grpo.step``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: str  # running | finished | stopped | failed | interrupted (...)
    step: int | None = None
    max_steps: int | None = None
    reward: float | None = None
    reward_std: float | None = None
    kl: float | None = None
    agents_answered: float | None = None
    at: float | None = None  # when the newest of these entries was written


class CertificateView(BaseModel):
    """The viewer's own client certificate: who the server thinks they are, and until when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    identity: str
    not_after: float
    warning: str | None = None  # within 30 days of expiry, or past it


_TAIL_BYTES = 1 << 20  # how far back from the end of the log the training progress is looked for
_TRAINING_ENDS = {"training.finished": "finished", "training.stopped": "stopped", "training.failed": "failed"}


def _tail_entries(entries: Path) -> list[dict[str, Any]]:
    """The log's last entries (newest first) within :data:`_TAIL_BYTES`: a page view never reads the whole log."""
    try:
        with entries.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL_BYTES)
            handle.seek(start)
            data = handle.read()
    except OSError:
        return []
    lines = data.split(b"\n")[1 if start else 0:]  # the first line of a tail is usually cut
    out = []
    for raw in reversed(lines):
        try:
            entry = json.loads(raw)["entry"]
        except (ValueError, KeyError, TypeError, RecursionError):  # a damaged line: the page shows the rest
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


CERT_WARN_DAYS = 30


def certificate_view(der: bytes | None, now: float) -> CertificateView | None:
    """The viewer's certificate (DER from the TLS connection) as the page shows it; None without one."""
    from cryptography import x509

    from crypto.errors import PKIError
    from crypto.identity import identity_of

    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        identity = identity_of(cert)
    except (ValueError, PKIError):
        return None
    not_after = cert.not_valid_after_utc.timestamp()
    days = (not_after - now) / 86400
    warning = None
    if days <= 0:
        warning = "EXPIRED: every connection with it is refused"
    elif days <= CERT_WARN_DAYS:
        warning = f"in {days:.1f} days: renew it (keygen, then mor ca sign-csr --renew)"
    return CertificateView(identity=identity, not_after=not_after, warning=warning)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def certificate_file_view(path: Path | None, now: float) -> CertificateView | None:
    """:func:`certificate_view` of a PEM certificate file, read at each call (a renewed one shows at once)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if path is None:
        return None
    try:
        der = x509.load_pem_x509_certificate(Path(path).read_bytes()).public_bytes(Encoding.DER)
    except (OSError, ValueError):
        return None
    return certificate_view(der, now)


def read_training_progress(entries: Path) -> TrainingProgressView | None:
    """The newest training run in the audit log ``entries`` (``entries.jsonl``), or None if none started."""
    last_step: dict[str, Any] | None = None
    state = "running"
    for entry in _tail_entries(entries):
        action = entry.get("action")
        if action == "grpo.step" and last_step is None:
            last_step = entry
        elif action in _TRAINING_ENDS and last_step is None:  # how it ended outranks a later restart
            state = _TRAINING_ENDS[action]
        elif action == "server.started" and state == "running":
            state = "interrupted (the server restarted since)"
        elif action == "training.started":
            config = (entry.get("details") or {}).get("config") or {}
            details = (last_step or {}).get("details") or {}
            step = _number(details.get("step"))
            max_steps = _number(config.get("max_steps"))
            return TrainingProgressView(
                state=state, step=int(step) if step is not None else None,
                max_steps=int(max_steps) if max_steps is not None else None, reward=_number(details.get("reward")),
                reward_std=_number(details.get("reward_std")), kl=_number(details.get("kl")),
                agents_answered=_number(details.get("agents_answered")),
                at=_number((last_step or entry).get("time")))
    return None
