"""Build the running server (and key holder) from their TOML configs.

The only place that knows where each dependency comes from: config -> policy, state store,
audit log, keys, the privacy-mode object with its key material
(:func:`server.privacy_material.open_privacy_mode`), TLS context -> :class:`Services`, bundled
with what must be closed at shutdown in a :class:`ServerRuntime` / :class:`KeyHolderRuntime`.
Running them (threads, signals, shutdown) is :mod:`server.runner`.

Two seams adapt the sibling packages to the service's narrow views: :func:`service_policy`
(``policies`` -> :class:`ServicePolicy`) and :func:`open_audit` (``audit`` -> :class:`AuditTrail`).
Every failure while building is one :class:`~server.errors.ConfigError` naming the file and
the reason, and an audit log already opened is closed again (it is locked to one writer).
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import AuditError
from crypto.ckks import CKKSKeyOwner
from crypto.errors import CryptoError
from crypto.pki import identity_of, parse_identity
from crypto.signing import SigningKey
from crypto.tls import server_ssl_context
from crypto.tls_reload import TlsReloader
from policies import Policy, PolicyError, load_policy
from server.admission import AdmissionControl, RateLimiter, RevocationList
from server.audit_trail import AuditLogTrail
from server.config import ServerConfig
from server.errors import ConfigError
from server.keyholder.app import KeyHolderServices
from server.keyholder.config import KeyHolderConfig
from server.keyholder.public_rounds import PublicRoundGate
from server.observability.logs import adopt_config_format
from server.observability.metrics import MeteredAuditTrail, PartyMetrics
from server.observability.wiring import Observability, observe_keyholder, observe_server
from server.privacy_material import open_privacy_mode
from server.retention import RetentionTimer
from server.services import ServicePolicy, Services
from server.state import StateStore

BURST_SECONDS = 10  # a client may spend this many seconds' worth of its rate at once


def load_consortium_policy(policy_path: Path) -> Policy:
    """The policy file, validated (InsecurePolicyWarning for pilots); ConfigError naming file and key."""
    try:
        return load_policy(policy_path)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


def service_policy_of(policy: Policy) -> ServicePolicy:
    """What the HTTP service enforces, from a loaded policy."""
    per_s = policy.limits.requests_per_minute / 60.0
    admitted = policy.admission
    return ServicePolicy(
        consortium=policy.consortium, digest=policy.digest(), privacy_mode=policy.privacy.mode,
        max_epsilon=policy.privacy.max_epsilon, max_delta=policy.privacy.max_delta,
        max_body_bytes=policy.limits.max_body_bytes, max_items=policy.scores.max_vector_length,
        requests_per_s=per_s, burst=max(1, round(per_s * BURST_SECONDS)),
        score_min=policy.scores.min, score_max=policy.scores.max, out_of_range=policy.scores.out_of_range,
        allowed_identities=None if admitted.allow_all_certified else frozenset(admitted.allowed_identities),
        insecure_reasons=tuple(policy.insecure_reasons()),
        public_rounds_per_agent=policy.privacy.public_rounds_per_agent,
        quarantine_after_failures=policy.rounds.quarantine_after_failures, quarantine_s=policy.rounds.quarantine_s,
        lifetime_epsilon=policy.privacy.lifetime_epsilon, accountant=policy.privacy.accountant,
        max_member_weight=policy.fusion.max_member_weight, clip_z=policy.fusion.clip_z,
        aggregate=policy.fusion.aggregate,
    )


def service_policy(policy_path: Path) -> ServicePolicy:
    """Seam: the consortium policy file -> what the HTTP service enforces."""
    return service_policy_of(load_consortium_policy(policy_path))


def open_audit(audit_dir: Path, signing_key: SigningKey, *, origin: str, checkpoint_every: int = 64,
               metrics: PartyMetrics | None = None) -> AuditLogTrail:
    """Seam: the audit package's log in ``audit_dir`` -> the service's :class:`AuditTrail` (close it!).

    With ``metrics``, every entry written is also counted (:class:`MeteredAuditTrail`).
    """
    try:
        trail = AuditLogTrail.open(audit_dir, signing_key, origin=origin, checkpoint_every=checkpoint_every)
    except AuditError as exc:
        raise ConfigError(f"audit log {audit_dir}: {exc}") from None
    return trail if metrics is None else MeteredAuditTrail(trail.log, metrics.observe)


@dataclass
class ServerRuntime:
    """The built server: its services, the one audit log they share, and its TLS context."""

    config: ServerConfig
    policy: Policy
    services: Services
    audit: AuditLogTrail
    ssl_context: ssl.SSLContext
    tls_reloader: TlsReloader | None = None  # renewed certificate and refreshed CRL, without a restart
    observability: Observability | None = None  # metrics and the probe listener ([observability])
    retention: RetentionTimer | None = None  # audit.retention_days on state rows (server/retention.py)

    def serving(self, api_alive: Any) -> None:
        """The API listens: readiness follows ``api_alive`` from now on."""
        if self.observability is not None:
            self.observability.serving(api_alive)

    def close(self) -> None:
        """Release the mode's key-holder connection, sign the final audit checkpoint and release the log."""
        if self.retention is not None:
            self.retention.stop()
        if self.observability is not None:
            self.observability.close()
        if self.tls_reloader is not None:
            self.tls_reloader.stop()
        self.services.privacy.close()
        # closing the pool's connections lets SQLite checkpoint its write-ahead log and remove the -wal and
        # -shm files: a stopped server leaves one state file, the one a backup or an operator expects
        self.services.state.engine.dispose()
        self.audit.close()


def _check_crl(config: ServerConfig, policy: Policy) -> None:
    named = policy.admission.revocation_list
    if named is None:
        return
    resolved = named if named.is_absolute() else (config.server.policy.parent / named).resolve()
    if resolved != config.tls.crl:
        raise ConfigError(f"{config.server.policy}: admission.revocation_list ({resolved}) is not the CRL the server "
                          f"checks ([tls].crl = {config.tls.crl} in {config.source}): name the same file in both")


def _check_consortium(config: ServerConfig, policy: Policy) -> None:
    """Refuse at start a policy for another consortium than the certificate's: it would refuse every member."""
    identity = identity_of(config.tls.cert.read_bytes())
    if parse_identity(identity)[0] != policy.consortium:
        raise ConfigError(f"{config.server.policy}: the policy is for consortium {policy.consortium!r}, but the "
                          f"server certificate ([tls].cert = {config.tls.cert} in {config.source}) is {identity}: "
                          "every member would be refused; pair the policy with this consortium's certificate")


def open_server(config: ServerConfig, *, clock: Any = time.time) -> ServerRuntime:
    """Everything the app and the trainer need, from a loaded config; close the result at shutdown."""
    adopt_config_format(config.observability.log_format)
    policy = load_consortium_policy(config.server.policy)
    _check_crl(config, policy)
    service = service_policy_of(policy)
    try:
        context = server_ssl_context(config.tls.cert, config.tls.key, config.tls.ca, config.tls.crl)
        _check_consortium(config, policy)
        signing_key = SigningKey.load_or_create(config.server.signing_key)
    except CryptoError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None
    metrics = PartyMetrics()
    audit = open_audit(config.server.audit_dir, signing_key, origin=f"mor://{policy.consortium}/server",
                       checkpoint_every=policy.audit.checkpoint_every, metrics=metrics)
    privacy = None
    try:
        privacy = open_privacy_mode(config, policy, audit=audit)
        admission = AdmissionControl(
            consortium=policy.consortium, revocations=RevocationList(config.tls.crl, config.tls.ca, now=clock),
            rate_limiter=RateLimiter(service.requests_per_s, service.burst),
            allowed_identities=service.allowed_identities,
        )
        services = Services(policy=service, state=StateStore(config.server.database_url, clock=clock), audit=audit,
                            signing_key=signing_key, admission=admission, privacy=privacy, clock=clock,
                            long_poll_max_s=config.server.long_poll_max_s, tls_cert=config.tls.cert)
        observability = observe_server(config, services, metrics)
        change = services.state.schema_change
        if change.changed:  # the schema was created or upgraded at this start (server/migrations)
            audit.record("server", "state.migrated", {"from_revision": change.before, "to_revision": change.after,
                                                      "adopted_pre_migration_schema": change.adopted})
        retention = RetentionTimer(services.state, audit, retention_days=policy.audit.retention_days, clock=clock)
    except BaseException as exc:
        if privacy is not None:
            privacy.close()
        audit.close()
        if isinstance(exc, CryptoError | OSError):
            raise ConfigError(f"{config.source}: {exc}") from None
        raise
    reloader = TlsReloader(context, cert=config.tls.cert, key=config.tls.key, crl=config.tls.crl, label="server")
    return ServerRuntime(config=config, policy=policy, services=services, audit=audit, ssl_context=context,
                         tls_reloader=reloader.watch(), observability=observability, retention=retention.start())


@dataclass
class KeyHolderRuntime:
    """The built key holder: its services, its own audit log and its TLS context."""

    config: KeyHolderConfig
    services: KeyHolderServices
    audit: AuditLogTrail
    ssl_context: ssl.SSLContext
    tls_reloader: TlsReloader | None = None
    observability: Observability | None = None

    def serving(self, api_alive: Any) -> None:
        if self.observability is not None:
            self.observability.serving(api_alive)

    def close(self) -> None:
        if self.observability is not None:
            self.observability.close()
        if self.tls_reloader is not None:
            self.tls_reloader.stop()
        self.audit.close()


def _public_round_gate(config: KeyHolderConfig, consortium: str, owner: CKKSKeyOwner,
                       revocations: RevocationList) -> PublicRoundGate | None:
    """Per-agent decryption of public rounds, as the key holder's own copy of the policy allows it."""
    path = config.keyholder.policy
    if path is None:
        return None
    policy = load_consortium_policy(path)
    if policy.consortium != consortium:
        raise ConfigError(f"{config.source}: [keyholder].policy {path} is for consortium {policy.consortium!r}, the "
                          f"server identity for {consortium!r}")
    return PublicRoundGate(enabled=policy.privacy.public_rounds_per_agent, ca_cert=config.tls.ca,
                           is_revoked=revocations.is_revoked, context_sha256=owner.public_context.sha256,
                           policy_source=str(path),
                           public_round_digests=frozenset(policy.privacy.public_round_digests))


def open_keyholder(config: KeyHolderConfig) -> KeyHolderRuntime:
    """The key holder's services (loads or creates its secret context); close the result at shutdown."""
    section = config.keyholder
    adopt_config_format(config.observability.log_format)
    try:
        consortium = parse_identity(section.server_identity)[0]
        context = server_ssl_context(config.tls.cert, config.tls.key, config.tls.ca, config.tls.crl)
        signing_key = SigningKey.load_or_create(section.signing_key)
        if section.secret_context.exists():
            owner = CKKSKeyOwner.load(section.secret_context, precision=section.precision)
        else:
            owner = CKKSKeyOwner.generate(precision=section.precision)
            owner.save(section.secret_context)
        revocations = RevocationList(config.tls.crl, config.tls.ca)
        admission = AdmissionControl(consortium=consortium, revocations=revocations,
                              rate_limiter=RateLimiter(section.requests_per_s, max(1, int(section.requests_per_s))))
    except (CryptoError, OSError) as exc:
        raise ConfigError(f"{config.source}: {exc}") from None
    public_rounds = _public_round_gate(config, consortium, owner, revocations)
    metrics = PartyMetrics()
    audit = open_audit(section.audit_dir, signing_key, origin=f"mor://{consortium}/keyholder", metrics=metrics)
    services = KeyHolderServices(owner=owner, server_identity=section.server_identity, audit=audit,
                                 admission=admission, max_body_bytes=section.max_body_bytes,
                                 public_rounds=public_rounds)
    audit.record("keyholder", "keyholder.per_agent_policy", {
        "policy": str(section.policy) if section.policy else None,
        "public_rounds_per_agent": public_rounds is not None and public_rounds.enabled})
    try:
        observability = observe_keyholder(config, services, metrics)
    except BaseException:
        audit.close()
        raise
    reloader = TlsReloader(context, cert=config.tls.cert, key=config.tls.key, crl=config.tls.crl, label="keyholder")
    return KeyHolderRuntime(config=config, services=services, audit=audit, ssl_context=context,
                            tls_reloader=reloader.watch(), observability=observability)


__all__ = ["KeyHolderRuntime", "ServerRuntime", "load_consortium_policy", "open_audit",
           "open_keyholder", "open_server", "service_policy", "service_policy_of"]
