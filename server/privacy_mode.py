"""The privacy mode as one object: what the server may hold, accept, open and fuse.

The policy names a mode (``tls-only`` / ``ckks`` / ``fused-only``);
:func:`server.privacy_material.open_privacy_mode` (at wiring, from the server config, where each
mode's key material is found) or :func:`privacy_mode_for` (tests, benchmarks) turn that
name into one of three classes, once. The services, the submissions route, the round
coordinator and the trainer are handed that object and ask it; none of them tests the
name. Outside this module, the name is only printed (status page, audit entries).

One small protocol, :class:`PrivacyModeBehaviour`:

==========================  =========================  ============================  ==============================
                            :class:`TlsOnlyMode`       :class:`CkksMode`             :class:`FusedOnlyMode`
==========================  =========================  ============================  ==============================
payload an agent sends      ``plain`` (signed scores)  ``ckks``                      ``ckks``
key material held           none                       the secret key (key owner)    public context + key-holder
                                                                                     client, never a secret key
score round (``fuse``)      read, calibrate, route     decrypt per agent (audited),  weights x ciphertexts summed
                                                       calibrate, route              homomorphically; key holder
                                                                                     opens only the sum
payload (after signature)   any                        fresh ciphertext under the    fresh ciphertext under the
                                                       server's context              key holder's context
public rounds (``collect``) signed header scores       server decrypts per agent     key holder opens per agent, and
                                                                                     only with the policy opt-in
==========================  =========================  ============================  ==============================

Every refusal is a :class:`~server.errors.PrivacyModeError` (a ``FusionError``), whatever the
mode and wherever it is asked: missing or forbidden key material at construction, a
per-agent request fused-only does not allow. An envelope of the wrong kind or context is a
:class:`~server.errors.EnvelopeModeError` carrying the HTTP-facing code the route answers with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from crypto.ckks import CKKSKeyOwner, PublicContext
from crypto.envelope import Envelope, OpenedEnvelope, PayloadKind
from crypto.errors import IntegrityError
from server.agent_vectors import AgentDecryptor, decrypt_vectors, keyholder_vectors, plain_vectors
from server.errors import EnvelopeModeError, PrivacyModeError
from server.fusion import (
    FusedDecryptor,
    FusionInput,
    FusionOutcome,
    ScoreRange,
    fuse_ckks,
    fuse_fused_only,
    fuse_tls_only,
)
from server.robust_fusion import NO_ROBUSTNESS, RobustFusion
from server.router.base import RouterBase
from server.services import AuditTrail
from wire.messages import PrivacyMode

Vectors = tuple[dict[str, list[float]], dict[str, str]]


class PrivacyModeBehaviour(Protocol):
    """What every part of the server may ask of the privacy mode (see the module docstring)."""

    name: ClassVar[PrivacyMode]
    payload_kind: ClassVar[PayloadKind]

    @property
    def scores(self) -> ScoreRange: ...
    @property
    def public_context(self) -> PublicContext | None: ...
    @property
    def holds_secret_key(self) -> bool: ...
    @property
    def decryptions(self) -> int | None: ...
    @property
    def collects_public_rounds(self) -> bool: ...
    @property
    def needs_key_bindings(self) -> bool: ...

    def check_envelope(self, env: Envelope) -> None: ...
    def check_payload(self, opened: OpenedEnvelope) -> None: ...
    def fuse(self, router: RouterBase, inp: FusionInput) -> FusionOutcome: ...
    def collect(self, round_id: str, envelopes: Mapping[str, Envelope],
                key_bindings: Mapping[str, dict[str, Any] | None] | None = None) -> Vectors: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class _Mode:
    """What the three modes share: the policy's score range, the audit trail, who acts, robust fusion."""

    scores: ScoreRange
    audit: AuditTrail
    actor: str = "server"
    robust: RobustFusion = NO_ROBUSTNESS  # the policy's [fusion] clip/aggregate (server.robust_fusion)

    name: ClassVar[PrivacyMode]
    payload_kind: ClassVar[PayloadKind] = "ckks"

    @property
    def public_context(self) -> PublicContext | None:
        return None

    @property
    def holds_secret_key(self) -> bool:
        return False

    @property
    def decryptions(self) -> int | None:
        """Ciphertexts this process has decrypted (None: it cannot decrypt)."""
        return None

    @property
    def collects_public_rounds(self) -> bool:
        return True

    @property
    def needs_key_bindings(self) -> bool:
        """Does ``collect`` need each agent's enrolment key binding (the key holder checks it)?"""
        return False

    def check_envelope(self, env: Envelope) -> None:
        """Refuse an envelope of the wrong payload kind or sealed under another context (before opening it)."""
        if env.kind != self.payload_kind:
            raise EnvelopeModeError("wrong_payload_kind", f"privacy mode {self.name} takes {self.payload_kind!r} "
                                                          f"envelopes, got {env.kind!r}")
        context = self.public_context
        if context is not None and env.context_sha256 != context.sha256:
            raise EnvelopeModeError("wrong_context", "envelope was sealed under another CKKS context: GET /v1/context")

    def check_payload(self, opened: OpenedEnvelope) -> None:
        """After the signature: a CKKS payload must be a fresh encryption under the context, else refused.

        Deserialising comes only after the signature checked out (a stranger's bytes are never
        parsed), and before a receipt is signed: a signed-but-malformed ciphertext is refused at
        the door rather than voiding a round at fusion.
        """
        context = self.public_context
        if context is None or opened.sealed is None:
            return
        try:
            context.check_fresh(opened.sealed)
        except IntegrityError:
            raise EnvelopeModeError("malformed_ciphertext", "the ciphertext is not a fresh CKKS encryption under "
                                    f"context {context.sha256[:16]}… (GET /v1/context)") from None

    def close(self) -> None:
        """Release what the mode holds open (the key-holder connection); idempotent."""


@dataclass(frozen=True)
class TlsOnlyMode(_Mode):
    """Scores in the clear inside mutual TLS (signed): pilots only, and the policy says so loudly."""

    name: ClassVar[PrivacyMode] = "tls-only"
    payload_kind: ClassVar[PayloadKind] = "plain"

    def fuse(self, router: RouterBase, inp: FusionInput) -> FusionOutcome:
        return fuse_tls_only(router, inp, scores=self.scores, robust=self.robust)

    def collect(self, round_id: str, envelopes: Mapping[str, Envelope],
                key_bindings: Mapping[str, dict[str, Any] | None] | None = None) -> Vectors:
        return plain_vectors(envelopes), {}


@dataclass(frozen=True)
class CkksMode(_Mode):
    """The server owns the CKKS secret key and decrypts each agent's vector (every decryption audited)."""

    key_owner: CKKSKeyOwner | None = None
    decryptions_before: int = 0  # recorded in the audit log by earlier runs of this server
    name: ClassVar[PrivacyMode] = "ckks"

    def __post_init__(self) -> None:
        if not isinstance(self.key_owner, CKKSKeyOwner):
            raise PrivacyModeError("ckks: the server's CKKSKeyOwner is required")

    @property
    def owner(self) -> CKKSKeyOwner:
        assert self.key_owner is not None  # checked at construction
        return self.key_owner

    @property
    def public_context(self) -> PublicContext:
        return self.owner.public_context

    @property
    def holds_secret_key(self) -> bool:
        return True

    @property
    def decryptions(self) -> int:
        return self.decryptions_before + self.owner.decryptions

    def fuse(self, router: RouterBase, inp: FusionInput) -> FusionOutcome:
        return fuse_ckks(router, inp, scores=self.scores, key_owner=self.owner, audit=self.audit, actor=self.actor,
                         robust=self.robust)

    def collect(self, round_id: str, envelopes: Mapping[str, Envelope],
                key_bindings: Mapping[str, dict[str, Any] | None] | None = None) -> Vectors:
        vectors, _, refused = decrypt_vectors(envelopes, key_owner=self.owner, audit=self.audit, round_id=round_id,
                                              actor=self.actor)
        return vectors, refused


@dataclass(frozen=True)
class FusedOnlyMode(_Mode):
    """The server holds only the public context; a separate key holder opens fused sums (and, opt-in, public rounds).

    ``owns_keyholder``: this object opened the key-holder client (from the server config) and
    closes it in :meth:`close`; a client handed in by a caller stays the caller's.
    """

    context: PublicContext | None = None
    keyholder: FusedDecryptor | None = None
    public_rounds_per_agent: bool = False
    owns_keyholder: bool = False
    name: ClassVar[PrivacyMode] = "fused-only"

    def __post_init__(self) -> None:
        if not isinstance(self.context, PublicContext):
            raise PrivacyModeError("fused-only: the server may hold only the key holder's PublicContext and must not "
                                   f"hold a secret key (got {type(self.context).__name__})")
        if self.keyholder is None:
            raise PrivacyModeError("fused-only: needs a key-holder client to open fused rewards")
        refusal = self.robust.refusal_for(self.name, per_member_plaintext=False)
        if refusal:
            raise PrivacyModeError(refusal)

    @property
    def public_context(self) -> PublicContext:
        assert self.context is not None  # checked at construction
        return self.context

    @property
    def collects_public_rounds(self) -> bool:
        return self.public_rounds_per_agent

    @property
    def needs_key_bindings(self) -> bool:
        return True

    def fuse(self, router: RouterBase, inp: FusionInput) -> FusionOutcome:
        assert self.keyholder is not None
        return fuse_fused_only(router, inp, scores=self.scores, context=self.public_context, keyholder=self.keyholder,
                               audit=self.audit, actor=self.actor)

    def collect(self, round_id: str, envelopes: Mapping[str, Envelope],
                key_bindings: Mapping[str, dict[str, Any] | None] | None = None) -> Vectors:
        if not self.public_rounds_per_agent:
            raise PrivacyModeError("fused-only: per-agent scores are never decrypted (the key holder decrypts only "
                                   "fused vectors) unless the policy sets privacy.public_rounds_per_agent = true; "
                                   "calibration stays self-reported and the router uniform")
        if not isinstance(self.keyholder, AgentDecryptor):
            raise PrivacyModeError("fused-only: this key-holder client cannot request per-agent decryptions")
        return keyholder_vectors(envelopes, keyholder=self.keyholder, key_bindings=key_bindings or {},
                                 audit=self.audit, round_id=round_id, actor=self.actor)

    def close(self) -> None:
        closer = getattr(self.keyholder, "close", None)
        if self.owns_keyholder and callable(closer):
            closer()


MODES: dict[str, type[TlsOnlyMode] | type[CkksMode] | type[FusedOnlyMode]] = {
    cls.name: cls for cls in (TlsOnlyMode, CkksMode, FusedOnlyMode)}


def privacy_mode_for(name: str, *, scores: ScoreRange, audit: AuditTrail, actor: str = "server",
                     key_owner: CKKSKeyOwner | None = None, context: PublicContext | None = None,
                     keyholder: FusedDecryptor | None = None, public_rounds_per_agent: bool = False,
                     owns_keyholder: bool = False, robust: RobustFusion = NO_ROBUSTNESS,
                     decryptions_before: int = 0) -> PrivacyModeBehaviour:
    """The mode object for a policy's mode name, refusing key material or options (``robust``) it may not have."""
    cls = MODES.get(name)
    if cls is None:
        raise PrivacyModeError(f"unknown privacy mode {name!r} (known: {', '.join(sorted(MODES))})")
    if public_rounds_per_agent and cls is not FusedOnlyMode:
        raise PrivacyModeError(f"{name}: public_rounds_per_agent applies only to fused-only")
    if cls is TlsOnlyMode:
        if key_owner is not None or context is not None or keyholder is not None:
            raise PrivacyModeError("tls-only: holds no CKKS material (scores travel in the clear inside mTLS)")
        return TlsOnlyMode(scores, audit, actor, robust)
    if cls is CkksMode:
        if keyholder is not None:
            raise PrivacyModeError("ckks: the server decrypts itself and has no key holder")
        return CkksMode(scores, audit, actor, robust, key_owner=key_owner, decryptions_before=decryptions_before)
    if key_owner is not None:
        raise PrivacyModeError("fused-only: the server must not hold a CKKSKeyOwner (the key holder owns the key)")
    return FusedOnlyMode(scores, audit, actor, robust, context=context, keyholder=keyholder,
                         public_rounds_per_agent=public_rounds_per_agent, owns_keyholder=owns_keyholder)


__all__ = ["MODES", "CkksMode", "FusedOnlyMode", "PrivacyModeBehaviour", "TlsOnlyMode", "privacy_mode_for"]
