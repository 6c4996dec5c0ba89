"""Prometheus metrics of one serving party, derived from what it writes into its audit log.

Why from the audit log: every exchange that matters (a round opened or closed, an envelope
accepted, a request refused with its code, a decryption) is already one audit entry, written
in exactly one place. :class:`MeteredAuditTrail` counts each entry as it is appended, so a
metric can never disagree with the log, and the ingest and round code need no counting of
their own. Counters start at 0 when the process starts (Prometheus' ``rate()`` handles the
reset); the log stays the durable record.

What is exported holds no member data: counts by outcome and refusal code, durations,
sizes and expiry times — never an identity, a score or an envelope. The gauges that need a
file (audit size, CRL, certificate) are read when ``/metrics`` is scraped, not on a timer.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from audit import AuditLog
from server.audit_trail import AuditLogTrail
from server.services import AuditRecord

log = logging.getLogger("mor.observability")
ROUND_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
ROUND_CLOSED = {"round.fused": "fused", "round.collected": "collected", "round.skipped": "skipped",
                "round.abandoned": "abandoned"}
DECRYPTIONS = {"decrypt.agent": "agent", "decrypt.fused": "fused", "decrypt.refused": "refused",
               "keyholder.agent_decryption": "agent_by_keyholder"}
SUBMISSIONS_PATH = "/v1/submissions"
MAX_OPEN_ROUNDS = 10_000  # round start times kept for the latency histogram (oldest dropped past it)


class PartyMetrics:
    """The counters of one party (server or key holder) in its own registry (several may share a test process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rounds = Counter("mor_rounds", "Score and public rounds by event", ["event"], registry=r)
        self.round_seconds = Histogram("mor_round_duration_seconds", "Time from a round opening to its close",
                                       ["outcome"], buckets=ROUND_BUCKETS_S, registry=r)
        self.accepted = Counter("mor_envelopes_accepted", "Envelopes accepted with a signed receipt", registry=r)
        self.envelopes_refused = Counter("mor_envelopes_refused", "Envelope submissions refused, by refusal code",
                                         ["reason"], registry=r)
        self.refused = Counter("mor_requests_refused", "Requests refused on any route, by refusal code",
                               ["reason"], registry=r)
        self.decryptions = Counter("mor_decryptions", "CKKS ciphertexts decrypted (refused: attempts that failed)",
                                   ["kind"], registry=r)
        self._opened: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, action: str, data: Mapping[str, Any], *, now: float | None = None) -> None:
        """Count one audit entry (``action`` and its details)."""
        moment = time.monotonic() if now is None else now
        if action == "submission.accepted":
            self.accepted.inc()
        elif action.startswith("reject."):
            reason = action.removeprefix("reject.")
            self.refused.labels(reason).inc()
            if str(data.get("path", "")).startswith(SUBMISSIONS_PATH):
                self.envelopes_refused.labels(reason).inc()
        elif action == "round.opened":
            self.rounds.labels("opened").inc()
            self._round_opened(str(data.get("round_id")), moment)
        elif action in ROUND_CLOSED:
            outcome = ROUND_CLOSED[action]
            self.rounds.labels(outcome).inc()
            started = self._round_closed(str(data.get("round_id")))
            if started is not None:
                self.round_seconds.labels(outcome).observe(max(0.0, moment - started))
        elif action in DECRYPTIONS and data.get("outcome") != "refused":
            chunks = data.get("chunks")
            self.decryptions.labels(DECRYPTIONS[action]).inc(chunks if isinstance(chunks, int) and chunks > 0 else 1)

    def _round_opened(self, round_id: str, moment: float) -> None:
        with self._lock:
            self._opened[round_id] = moment
            while len(self._opened) > MAX_OPEN_ROUNDS:
                self._opened.popitem(last=False)

    def _round_closed(self, round_id: str) -> float | None:
        with self._lock:
            return self._opened.pop(round_id, None)


class MeteredAuditTrail(AuditLogTrail):
    """The audit trail, with every appended entry also counted by ``observe`` (a metric failure never fails a write)."""

    def __init__(self, log_: AuditLog, observe: Callable[[str, Mapping[str, Any]], None]) -> None:
        super().__init__(log_)
        self._observe = observe

    def record(self, actor: str, action: str, data: Mapping[str, Any]) -> AuditRecord:
        entry = super().record(actor, action, data)
        self._count([(actor, action, data)])
        return entry

    def record_many(self, records: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[AuditRecord]:
        """The group commit of several entries (one fsync), each counted once written."""
        entries: list[AuditRecord] = super().record_many(records)  # type: ignore[misc]
        self._count(records)
        return entries

    def _count(self, records: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None:
        for _actor, action, data in records:
            try:
                self._observe(action, data)
            except Exception:  # noqa: BLE001 - the entry is written; a metric is not worth failing the request for
                log.exception("could not count audit entry %s", action)


def _seconds_until(moment: dt.datetime | None, now: dt.datetime) -> float:
    return float("nan") if moment is None else (moment - now).total_seconds()


class FileGauges(Collector):
    """Gauges read at scrape time: audit log entries and bytes, CRL age and expiry, certificate expiry."""

    def __init__(self, *, audit_size: Callable[[], int], audit_dir: Path, crl: Path, cert: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.audit_size, self.audit_dir, self.crl, self.cert, self.clock = audit_size, audit_dir, crl, cert, clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        yield GaugeMetricFamily("mor_audit_log_entries", "Entries in this party's audit log", value=self.audit_size())
        size = sum(p.stat().st_size for p in self.audit_dir.iterdir() if p.is_file()) if self.audit_dir.is_dir() else 0
        yield GaugeMetricFamily("mor_audit_log_bytes", "Bytes of this party's audit log files", value=size)
        try:
            crl = x509.load_pem_x509_crl(self.crl.read_bytes())
            age, left = (now - crl.last_update_utc).total_seconds(), _seconds_until(crl.next_update_utc, now)
        except (OSError, ValueError):
            age = left = float("nan")
        yield GaugeMetricFamily("mor_crl_age_seconds", "Seconds since the CRL in use was issued", value=age)
        yield GaugeMetricFamily("mor_crl_expires_in_seconds",
                                "Seconds until the CRL's next update (negative: expired, every handshake fails)",
                                value=left)
        try:
            cert_left = _seconds_until(x509.load_pem_x509_certificate(self.cert.read_bytes()).not_valid_after_utc, now)
        except (OSError, ValueError):
            cert_left = float("nan")
        yield GaugeMetricFamily("mor_certificate_expires_in_seconds", "Seconds until this party's TLS certificate "
                                                                      "expires", value=cert_left)


__all__ = ["FileGauges", "MeteredAuditTrail", "PartyMetrics"]
