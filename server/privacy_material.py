"""Where a privacy mode's key material comes from: the server config and the consortium policy.

Apart from :mod:`server.privacy_mode` (what each mode may hold and do) because this is I/O —
secret-context files, the key holder over mutual TLS — done once at wiring
(:func:`server.wiring.open_server`); the mode objects themselves stay pure and testable.
"""

from __future__ import annotations

from pathlib import Path

from crypto.ckks import CKKSKeyOwner, CKKSParameters
from policies import Policy
from server.config import ServerConfig
from server.errors import ConfigError
from server.fusion import ScoreRange
from server.privacy_mode import MODES, CkksMode, PrivacyModeBehaviour, TlsOnlyMode, privacy_mode_for
from server.robust_fusion import RobustFusion
from server.services import AuditTrail


def _load_key_owner(path: Path | None, policy: Policy, source: Path | None) -> CKKSKeyOwner:
    """ckks: the server's secret context from its file, created on first start with the policy's parameters."""
    if path is None:
        raise ConfigError(f"{source}: [server].ckks_secret_context: required under privacy mode ckks")
    wanted = policy.ckks
    parameters = CKKSParameters(wanted.poly_modulus_degree, tuple(wanted.coeff_mod_bit_sizes), wanted.scale_bits)
    if not path.exists():
        owner = CKKSKeyOwner.generate(parameters, precision=wanted.release_precision)
        owner.save(path)
        return owner
    owner = CKKSKeyOwner.load(path, precision=wanted.release_precision)
    if owner.parameters != parameters:
        raise ConfigError(f"{path}: CKKS context has {owner.parameters}; the policy asks for {parameters} "
                          "(rotate the key: move the file away and restart)")
    return owner


def open_privacy_mode(config: ServerConfig, policy: Policy, *, audit: AuditTrail) -> PrivacyModeBehaviour:
    """The server's mode object with its key material, from its config: the one place material is found.

    ckks loads (or creates) the secret context; fused-only opens the key-holder client (mutual
    TLS with the server's certificate), fetches its public context and keeps the client for
    the trainer — close the result at shutdown. ConfigError names the file and the key.
    """
    scores = ScoreRange(policy.scores.min, policy.scores.max, policy.scores.out_of_range)
    robust = RobustFusion(policy.fusion.clip_z, policy.fusion.aggregate, policy.fusion.trim_each_end,
                          policy.fusion.group_normalise, policy.fusion.disagreement_penalty)
    name = policy.privacy.mode
    if MODES[name] is CkksMode:
        counted = getattr(audit, "logged_decryptions", None)  # earlier runs' decryptions, from the log
        return privacy_mode_for(name, scores=scores, audit=audit, robust=robust,
                                key_owner=_load_key_owner(config.server.ckks_secret_context, policy, config.source),
                                decryptions_before=counted() if callable(counted) else 0)
    if MODES[name] is TlsOnlyMode:
        return privacy_mode_for(name, scores=scores, audit=audit, robust=robust)
    from crypto.tls import client_ssl_context
    from server.keyholder.client import KeyHolderClient

    if config.server.keyholder_url is None:
        raise ConfigError(f"{config.source}: [server].keyholder_url: required under privacy mode fused-only")
    tls = config.tls
    client = KeyHolderClient(config.server.keyholder_url, client_ssl_context(tls.cert, tls.key, tls.ca, tls.crl))
    try:
        return privacy_mode_for(name, scores=scores, audit=audit, context=client.public_context(), keyholder=client,
                                robust=robust, public_rounds_per_agent=policy.privacy.public_rounds_per_agent,
                                owns_keyholder=True)
    except BaseException:
        client.close()
        raise


__all__ = ["open_privacy_mode"]
