"""Certificate rotation and CRL refresh without a restart: reload files into a live TLS context.

An ``ssl.SSLContext`` reads its certificate, key and CRL once. A renewed certificate, or a
refreshed CRL, would then only count after a restart — and a CRL that expires inside a running
context refuses every handshake even though a fresh file sits on disk. :class:`TlsReloader`
watches the files (inode, size, mtime) and loads what changed into the *same* context, so every
new connection uses it while connections already open carry on:

* certificate + key: ``load_cert_chain`` replaces the pair. Half-installed files (a new key with
  the old certificate) fail to load; the previous pair is kept and a later change retries.
* CRL: ``load_verify_locations`` adds the new CRL to the context's store. OpenSSL then uses, per
  issuer, the CRL that is still current with the latest last-update time — so the fresh one wins
  over the expired or superseded one (two CRLs signed within the same second tie, and the first
  loaded stays in use; the server's per-request check reads the file itself and has no such tie).

The agent calls :meth:`TlsReloader.refresh` before opening a connection; the servers run
:meth:`TlsReloader.watch` in a thread. A CRL close to or past its expiry is logged on every
reload (see :mod:`crypto.crl_health`).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

from crypto.crl_health import read_crl_health
from crypto.errors import CryptoError

log = logging.getLogger(__name__)
Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> Stamp:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class TlsReloader:
    """Keeps ``context`` in step with its certificate, key and CRL files (loaded by the caller first)."""

    def __init__(self, context: ssl.SSLContext, *, cert: str | Path, key: str | Path,
                 crl: str | Path | None = None, label: str = "TLS") -> None:
        self.context, self.label = context, label
        self.cert, self.key = Path(cert), Path(key)
        self.crl = Path(crl) if crl is not None else None
        self._lock = threading.Lock()
        self._pair = (_stamp(self.cert), _stamp(self.key))
        self._crl = _stamp(self.crl) if self.crl is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load whatever changed on disk; True when a new certificate is now in use."""
        with self._lock:
            renewed = self._refresh_pair()
            self._refresh_crl()
        return renewed

    def _refresh_pair(self) -> bool:
        pair = (_stamp(self.cert), _stamp(self.key))
        if pair == self._pair:
            return False
        self._pair = pair
        try:
            self.context.load_cert_chain(certfile=str(self.cert), keyfile=str(self.key))
        except (OSError, ssl.SSLError) as exc:
            log.warning("%s: kept the previous certificate: %s + %s do not load as a pair yet (%s)",
                        self.label, self.cert, self.key, exc)
            return False
        log.warning("%s: renewed certificate %s loaded; new connections use it", self.label, self.cert)
        return True

    def _refresh_crl(self) -> None:
        if self.crl is None:
            return
        stamp = _stamp(self.crl)
        if stamp == self._crl:
            return
        self._crl = stamp
        try:
            self.context.load_verify_locations(cafile=str(self.crl))
            health = read_crl_health(self.crl)
        except (OSError, ssl.SSLError, CryptoError) as exc:
            log.error("%s: kept the previous CRL: %s does not load (%s)", self.label, self.crl, exc)
            return
        if health.warning:
            log.error("%s: %s", self.label, health.warning)
        else:
            log.info("%s: CRL %s reloaded (next update %s)", self.label, self.crl, health.next_update)

    def watch(self, interval_s: float = 30.0) -> TlsReloader:
        """Refresh every ``interval_s`` in a daemon thread until :meth:`stop`; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, args=(interval_s,), name=f"tls-reload-{self.label}",
                                            daemon=True)
            self._thread.start()
        return self

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.refresh()
            except Exception:  # a watcher that dies silently would be worse than one that logs and goes on
                log.exception("%s: reloading TLS files failed", self.label)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
