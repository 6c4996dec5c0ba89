"""Metrics, readiness checks and the probe listener of the server and the key holder, from their configs.

Called by :mod:`server.wiring` while it builds a party: the metrics object exists before the
audit log is opened (the log is wrapped to count what it writes), the listener starts once
the services exist, and :meth:`Observability.serving` is told when the API listens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.observability import readiness
from server.observability.metrics import FileGauges, PartyMetrics
from server.observability.probes import ProbeListener
from server.observability.settings import ObservabilitySettings

if TYPE_CHECKING:
    from server.config import ServerConfig, TLSFiles
    from server.keyholder.app import KeyHolderServices
    from server.keyholder.config import KeyHolderConfig
    from server.services import Services


@dataclass
class Observability:
    """One party's metrics and (when configured) its running probe listener."""

    metrics: PartyMetrics
    probes: ProbeListener | None = None

    def serving(self, api_alive: Callable[[], bool]) -> None:
        if self.probes is not None:
            self.probes.serving(api_alive)

    def close(self) -> None:
        if self.probes is not None:
            self.probes.stop()


def _sqlite_dir(database_url: str) -> Path | None:
    prefix = "sqlite:///"
    if database_url.startswith(prefix) and database_url != "sqlite:///:memory:":
        return Path(database_url[len(prefix):]).parent
    return None


def _start(settings: ObservabilitySettings, metrics: PartyMetrics, tls: TLSFiles, audit_dir: Path,
           audit_size: Callable[[], int], clock: Callable[[], float], checks: dict[str, readiness.Check],
           name: str) -> Observability:
    metrics.registry.register(FileGauges(audit_size=audit_size, audit_dir=audit_dir, crl=tls.crl, cert=tls.cert,
                                         clock=clock))
    if settings.probe_port is None:
        return Observability(metrics)
    checks = {**checks, "audit_log": readiness.writable_dir(audit_dir, "audit log directory"),
              "crl": readiness.crl_current(tls.crl, clock),
              "certificate": readiness.certificate_current(tls.cert, clock)}
    listener = ProbeListener(host=settings.probe_host, port=settings.probe_port, registry=metrics.registry,
                             checks=checks, name=name)
    return Observability(metrics, listener.start())


def observe_server(config: ServerConfig, services: Services, metrics: PartyMetrics) -> Observability:
    """The server's readiness: state store, its folder, audit log, key material the mode needs, CRL, certificate."""
    privacy = services.privacy
    checks: dict[str, readiness.Check] = {"state_store": readiness.state_store(services.state.engine),
                                          "draining": readiness.not_stopping(services.stopping)}
    folder = _sqlite_dir(config.server.database_url)
    if folder is not None:
        checks["state_dir"] = readiness.writable_dir(folder, "state store directory")
    if services.policy.privacy_mode == "ckks":
        checks["key_material"] = readiness.key_material(lambda: privacy.holds_secret_key, "the CKKS secret key")
    elif services.policy.privacy_mode == "fused-only":
        checks["key_material"] = readiness.key_material(lambda: privacy.public_context is not None,
                                                        "the key holder's public CKKS context")
    return _start(config.observability, metrics, config.tls, config.server.audit_dir, services.audit.size,
                  services.clock, checks, "mor-server")


def observe_keyholder(config: KeyHolderConfig, services: KeyHolderServices, metrics: PartyMetrics) -> Observability:
    """The key holder's readiness: its secret key, audit log, CRL, certificate."""
    import time

    owner = services.owner
    checks = {"key_material": readiness.key_material(lambda: owner is not None and owner.public_context is not None,
                                                     "the CKKS secret context")}
    return _start(config.observability, metrics, config.tls, config.keyholder.audit_dir, services.audit.size,
                  time.time, checks, "mor-keyholder")


__all__ = ["Observability", "observe_keyholder", "observe_server"]
