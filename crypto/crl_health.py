"""How long the consortium CRL stays usable, and the warning to give before it stops being so.

Why this matters: TLS peers that check a CRL *fail closed* once its next-update time has
passed — every connection is refused, with nothing but a handshake error on the other side.
The CA refreshes the CRL (``mor ca crl``), but someone must notice when that was forgotten:
the server log, the status page and ``mor ca list`` all use this one assessment, so they warn
with the same words from :data:`WARN_WITHIN` before the expiry, and loudly after it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from crypto.errors import KeyFileError

WARN_WITHIN = dt.timedelta(days=7)
REFRESH_HINT = "run `mor ca crl --dir CA_DIR` and redistribute ca/crl.pem"


@dataclass(frozen=True)
class CrlHealth:
    """The CRL's number, next update and, when it is close to or past it, the warning to show."""

    number: int | None
    next_update: dt.datetime | None
    expired: bool
    warning: str | None


def crl_health(crl: x509.CertificateRevocationList, *, now: dt.datetime | None = None,
               source: str = "the CRL") -> CrlHealth:
    """Assess ``crl`` at ``now`` (default: the current time)."""
    moment = now or dt.datetime.now(dt.UTC)
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        number = None
    next_update = crl.next_update_utc
    if next_update is None:
        return CrlHealth(number, None, False, None)
    left = next_update - moment
    if left <= dt.timedelta(0):
        warning = (f"{source} EXPIRED at {next_update.isoformat()}: every TLS connection that checks it is refused "
                   f"until a fresh CRL is installed; {REFRESH_HINT}")
        return CrlHealth(number, next_update, True, warning)
    if left <= WARN_WITHIN:
        days = left.total_seconds() / 86400
        warning = f"{source} expires at {next_update.isoformat()} (in {days:.1f} days); {REFRESH_HINT}"
        return CrlHealth(number, next_update, False, warning)
    return CrlHealth(number, next_update, False, None)


def read_crl_health(path: str | Path, *, now: dt.datetime | None = None) -> CrlHealth:
    """:func:`crl_health` of the PEM CRL in ``path``; :class:`KeyFileError` if it cannot be read."""
    path = Path(path)
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read CRL: {exc.strerror}") from None
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM CRL") from None
    return crl_health(crl, now=now, source=f"CRL {path}")
