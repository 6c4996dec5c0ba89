"""What ``/readyz`` checks: each check returns None when fine, or one sentence saying what is wrong.

Why these: a party that answers "ready" must be able to do its job *now*. The server cannot
issue a receipt without its state store and its audit log (a receipt only after both are
written), cannot open a ciphertext without its key material, and once the CRL's next update
has passed every TLS handshake that checks it fails — so each of those is a check. A
dependency another party provides (the key holder, for a fused-only server) is deliberately
not one: a blip there would take every server replica out of service at once, and the round
code already answers it (the round is skipped and audited).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from sqlalchemy import text
from sqlalchemy.engine import Engine

from crypto.crl_health import read_crl_health
from crypto.errors import KeyFileError

Check = Callable[[], str | None]
MIN_FREE_BYTES = 64 * 1024 * 1024  # below this an audit append or a SQLite commit may fail mid-round


def state_store(engine: Engine) -> Check:
    def check() -> str | None:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any driver error means "not reachable"; the text says which
            return f"state store unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return None

    return check


def writable_dir(directory: Path, what: str) -> Check:
    """The directory exists, its filesystem is mounted read-write with room left, and this user may write to it."""

    def check() -> str | None:
        if not directory.is_dir():
            return f"{what} {directory} is missing (volume not mounted?)"
        stats = os.statvfs(directory)
        if stats.f_flag & os.ST_RDONLY:
            return f"{what} {directory} is on a read-only filesystem"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{what} {directory} is not writable by this user"
        free = stats.f_bavail * stats.f_frsize
        if free < MIN_FREE_BYTES:
            return f"{what} {directory}: only {free // 1024 // 1024} MiB free"
        return None

    return check


def crl_current(path: Path, clock: Callable[[], float]) -> Check:
    def check() -> str | None:
        try:
            health = read_crl_health(path, now=dt.datetime.fromtimestamp(clock(), dt.UTC))
        except KeyFileError as exc:
            return str(exc)
        return health.warning if health.expired else None

    return check


def certificate_current(path: Path, clock: Callable[[], float]) -> Check:
    def check() -> str | None:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            return f"TLS certificate {path} unreadable: {exc}"
        if cert.not_valid_after_utc <= dt.datetime.fromtimestamp(clock(), dt.UTC):
            return f"TLS certificate {path} expired at {cert.not_valid_after_utc.isoformat()}"
        return None

    return check


def key_material(present: Callable[[], bool], what: str) -> Check:
    return lambda: None if present() else f"{what} not loaded"


def not_stopping(stopping: threading.Event) -> Check:
    return lambda: "stopping (SIGTERM received): draining" if stopping.is_set() else None


def run_checks(checks: dict[str, Check]) -> dict[str, str | None]:
    """Every check by name -> None or its problem (a check that raises is a problem, never a 500)."""
    results: dict[str, str | None] = {}
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as exc:  # noqa: BLE001 - a probe answers, whatever a check does
            results[name] = f"check failed: {type(exc).__name__}: {exc}"
    return results


__all__ = ["Check", "certificate_current", "crl_current", "key_material", "not_stopping", "run_checks",
           "state_store", "writable_dir"]
