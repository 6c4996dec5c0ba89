"""Who is calling, and may they? Identity from the verified certificate, never from a header.

The TLS handshake already proved the peer holds a key certified by the consortium CA (and
checked the CRL as last reloaded, see :mod:`crypto.tls_reload`). Per request, on top of that:

* the identity is the certificate's one ``mor://<consortium>/<role>/<name>`` URI SAN;
* the certificate's serial is checked against the CRL **file** as it is *now*: the file is
  re-read (and its signature checked against the CA) whenever its inode, size or mtime
  changes, so a revocation takes effect on the next request — also on connections that were
  opened before it — with no restart. A CRL that is unreadable, forged or expired fails
  closed (503), like OpenSSL does at the handshake, and an expired one is logged as an error;
  within 7 days of its next update a warning is logged and :meth:`RevocationList.health`
  shows the date on the status page;
* the admission policy: an explicit allow-list of identities, or every certified member;
* a per-identity token-bucket rate limit.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from crypto.crl_health import CrlHealth, crl_health
from crypto.errors import PKIError
from crypto.pki import identity_of, parse_identity
from server.rejections import Rejection

Clock = Callable[[], float]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """The authenticated peer of one request."""

    identity: str
    consortium: str
    role: str
    name: str
    serial: int


class RevocationList:
    """The consortium CRL, re-read whenever the file changes (see the module docstring)."""

    def __init__(self, crl_path: Path, ca_cert_path: Path, *, now: Clock = time.time) -> None:
        self.crl_path = Path(crl_path)
        self._ca = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes())
        self._now = now
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._crl: x509.CertificateRevocationList | None = None
        self._error = "not loaded yet"
        self._expired_logged_at = float("-inf")

    def _load(self) -> None:
        try:
            stat = os.stat(self.crl_path)
        except OSError as exc:
            self._stamp, self._crl, self._error = None, None, f"{self.crl_path}: {exc.strerror}"
            return
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError) as exc:
            self._crl, self._error = None, f"{self.crl_path}: not a PEM CRL ({exc})"
            return
        if crl.issuer != self._ca.subject or not crl.is_signature_valid(self._ca.public_key()):  # type: ignore[arg-type]
            self._crl, self._error = None, f"{self.crl_path}: not signed by the consortium CA"
            return
        self._crl, self._error = crl, ""
        health = self.health()
        if health is not None and health.warning:
            log.warning("%s", health.warning)

    def health(self) -> CrlHealth | None:
        """Next update of the CRL in use and the warning due (7 days ahead); None while it is unusable."""
        crl = self._crl
        now = dt.datetime.fromtimestamp(self._now(), dt.UTC)
        return crl_health(crl, now=now, source=f"CRL {self.crl_path}") if crl is not None else None

    def is_revoked(self, serial: int) -> bool:
        """True if ``serial`` is on the current CRL; Rejection 503 if the CRL cannot be trusted."""
        with self._lock:
            self._load()
            crl, error = self._crl, self._error
        if crl is None:
            raise Rejection(503, "crl_unavailable", f"revocation list unusable, failing closed: {error}")
        next_update = crl.next_update_utc
        if next_update is not None and next_update < dt.datetime.fromtimestamp(self._now(), dt.UTC):
            if self._now() - self._expired_logged_at >= 60:  # loud, but once a minute, not per request
                self._expired_logged_at = self._now()
                log.error("REVOCATION LIST EXPIRED at %s: every request is refused (503) until a fresh %s is "
                          "installed (mor ca crl)", next_update.isoformat(), self.crl_path)
            raise Rejection(503, "crl_unavailable", f"{self.crl_path}: revocation list expired at {next_update}")
        return crl.get_revoked_certificate_by_serial_number(serial) is not None


class RateLimiter:
    """Token bucket per identity: ``rate`` requests per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, *, now: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate={rate}, burst={burst}: need rate > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._now = now
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        with self._lock:
            current = self._now()
            tokens, last = self._buckets.get(key, (float(self.burst), current))
            tokens = min(float(self.burst), tokens + (current - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, current)
            return allowed


class AdmissionControl:
    """Turns a verified peer certificate into a :class:`Caller`, or a Rejection."""

    def __init__(self, *, consortium: str, revocations: RevocationList, rate_limiter: RateLimiter,
                 allowed_identities: Iterable[str] | None = None) -> None:
        self.consortium = consortium
        self.revocations = revocations
        self.rate_limiter = rate_limiter
        self.allowed = frozenset(allowed_identities) if allowed_identities is not None else None

    def identify(self, der: bytes | None) -> Caller:
        """Identity and serial of the peer certificate (no policy yet)."""
        if not der:
            raise Rejection(401, "no_client_certificate", "a client certificate from the consortium CA is required")
        try:
            cert = x509.load_der_x509_certificate(der)
            identity = identity_of(cert)
            consortium, role, name = parse_identity(identity)
        except (ValueError, PKIError) as exc:
            raise Rejection(403, "bad_certificate", f"client certificate carries no usable identity: {exc}") from None
        return Caller(identity, consortium, role, name, cert.serial_number)

    def check(self, caller: Caller) -> None:
        """Apply revocation, consortium, admission policy and rate limit — in that order."""
        if self.revocations.is_revoked(caller.serial):
            raise Rejection(403, "certificate_revoked",
                            f"certificate serial {caller.serial:x} of {caller.identity} is revoked")
        if caller.consortium != self.consortium:
            raise Rejection(403, "wrong_consortium",
                            f"{caller.identity} is not a member of consortium {self.consortium!r}")
        if self.allowed is not None and caller.role == "client" and caller.identity not in self.allowed:
            raise Rejection(403, "not_admitted", f"{caller.identity} is not on the admission policy's allow-list")
        if not self.rate_limiter.allow(caller.identity):
            raise Rejection(429, "rate_limited", f"{caller.identity}: too many requests, slow down")


def require_role(caller: Caller, role: str) -> None:
    """Rejection 403 unless the caller's certificate was issued for ``role``."""
    if caller.role != role:
        raise Rejection(403, "wrong_role", f"{caller.identity} has role {caller.role!r}; this endpoint needs {role!r}")
