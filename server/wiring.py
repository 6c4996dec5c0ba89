"""Build the running server (and key holder) from their TOML configs, and serve them.

The only place that knows where each dependency comes from: config -> policy, state store,
audit log, keys, CKKS material by privacy mode, TLS context -> :class:`Services` ->
``create_app`` -> uvicorn with :class:`server.mtls.MutualTLSProtocol`.

Two seams adapt the sibling packages to the service's narrow views: :func:`service_policy`
(``policies`` -> :class:`ServicePolicy`) and :func:`open_audit` (``audit`` -> :class:`AuditTrail`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from crypto.ckks import CKKSKeyOwner, PublicContext
from crypto.errors import CryptoError
from crypto.signing import SigningKey
from crypto.tls import client_ssl_context, server_ssl_context
from server.admission import Admission, RateLimiter, RevocationList
from server.config import ServerConfig, load_server_config
from server.errors import ConfigError, ServerError
from server.keyholder.config import KeyHolderConfig, load_keyholder_config
from server.services import AuditTrail, ServicePolicy, Services
from server.state import StateStore


def service_policy(policy_path: Path) -> ServicePolicy:
    """Seam: the consortium policy file -> what the HTTP service enforces."""
    raise ConfigError(f"{policy_path}: the policies package is not wired into the server yet (server/wiring.py)")


def open_audit(audit_dir: Path, signing_key: SigningKey, *, origin: str) -> AuditTrail:
    """Seam: the audit package's log in ``audit_dir`` -> the service's :class:`AuditTrail`."""
    raise ConfigError(f"{audit_dir}: the audit package is not wired into the server yet (server/wiring.py)")


def _ckks_material(config: ServerConfig, mode: str) -> tuple[CKKSKeyOwner | None, PublicContext | None]:
    section = config.server
    if mode == "tls-only":
        return None, None
    if mode == "fused-only":
        from server.keyholder.client import KeyHolderClient

        if section.keyholder_url is None:
            raise ConfigError(f"{config.source}: [server].keyholder_url: required under privacy mode fused-only")
        context = client_ssl_context(config.tls.cert, config.tls.key, config.tls.ca, config.tls.crl)
        with KeyHolderClient(section.keyholder_url, context) as client:
            return None, client.public_context()
    if section.ckks_secret_context is None:
        raise ConfigError(f"{config.source}: [server].ckks_secret_context: required under privacy mode ckks")
    path = section.ckks_secret_context
    if path.exists():
        owner = CKKSKeyOwner.load(path)
    else:
        owner = CKKSKeyOwner.generate()
        owner.save(path)
    return owner, owner.public_context


def build_services(config: ServerConfig, *, clock: Any = time.time) -> Services:
    """Everything the app needs, from a loaded config."""
    policy = service_policy(config.server.policy)
    signing_key = SigningKey.load_or_create(config.server.signing_key)
    audit = open_audit(config.server.audit_dir, signing_key, origin=f"mor://{policy.consortium}/server")
    owner, public = _ckks_material(config, policy.privacy_mode)
    admission = Admission(
        consortium=policy.consortium, revocations=RevocationList(config.tls.crl, config.tls.ca, now=clock),
        rate_limiter=RateLimiter(policy.requests_per_s, policy.burst), allowed_identities=policy.allowed_identities,
    )
    return Services(policy=policy, state=StateStore(config.server.database_url), audit=audit,
                    signing_key=signing_key, admission=admission, public_context=public, ckks=owner, clock=clock,
                    long_poll_max_s=config.server.long_poll_max_s)


def serve(config_path: str | Path, *, log_level: str = "warning") -> None:
    """``mor server serve``: run the HTTP API until interrupted."""
    import uvicorn

    from server.app import create_app
    from server.mtls import uvicorn_config

    config = load_server_config(config_path)
    try:
        services = build_services(config)
        context = server_ssl_context(config.tls.cert, config.tls.key, config.tls.ca, config.tls.crl)
    except CryptoError as exc:
        raise ServerError(str(exc)) from None
    services.audit.record("server", "server.started", {"privacy_mode": services.policy.privacy_mode,
                                                       "policy_digest": services.policy.digest})
    uvicorn.Server(uvicorn_config(create_app(services), host=config.server.host, port=config.server.port,
                                  ssl_context=context, log_level=log_level)).run()


def build_keyholder(config: KeyHolderConfig) -> Any:
    """The key holder's services (loads or creates its secret context)."""
    from server.keyholder.app import KeyHolderServices

    section = config.keyholder
    path = section.secret_context
    owner = CKKSKeyOwner.load(path, precision=section.precision) if path.exists() else None
    if owner is None:
        owner = CKKSKeyOwner.generate(precision=section.precision)
        owner.save(path)
    signing_key = SigningKey.load_or_create(section.signing_key)
    from crypto.pki import parse_identity

    consortium = parse_identity(section.server_identity)[0]
    audit = open_audit(section.audit_dir, signing_key, origin=f"mor://{consortium}/keyholder")
    admission = Admission(consortium=consortium, revocations=RevocationList(config.tls.crl, config.tls.ca),
                          rate_limiter=RateLimiter(section.requests_per_s, max(1, int(section.requests_per_s))))
    return KeyHolderServices(owner=owner, server_identity=section.server_identity, audit=audit,
                             admission=admission, max_body_bytes=section.max_body_bytes)


def serve_keyholder(config_path: str | Path, *, log_level: str = "warning") -> None:
    """``mor keyholder serve``: run the key holder until interrupted."""
    import uvicorn

    from server.keyholder.app import create_keyholder_app
    from server.mtls import uvicorn_config

    config = load_keyholder_config(config_path)
    services = build_keyholder(config)
    context = server_ssl_context(config.tls.cert, config.tls.key, config.tls.ca, config.tls.crl)
    services.audit.record("keyholder", "keyholder.started", {"context_sha256": services.owner.public_context.sha256})
    uvicorn.Server(uvicorn_config(create_keyholder_app(services), host=config.keyholder.host,
                                  port=config.keyholder.port, ssl_context=context, log_level=log_level)).run()
