"""Per-agent score vectors, one way per privacy mode — what calibrate/router rounds and ckks fusion read.

Why apart from :mod:`server.fusion`: these are the only places an individual member's scores
become plaintext on the server side, so they are kept in one short module an auditor can read
whole: signed header scores (tls-only), the server's own decryption (ckks, every decryption
audited), or — fused-only public rounds, opt-in — the key holder's per-agent decryption after
its own checks (:mod:`server.keyholder.public_rounds`), each request audited ok/refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from crypto.ckks import CKKSKeyOwner, SealedVector
from crypto.envelope import Envelope
from crypto.errors import IntegrityError
from server.errors import FusionError, KeyHolderError
from server.services import AuditTrail


@runtime_checkable
class AgentDecryptor(Protocol):
    """fused-only, public rounds: the key holder's per-agent decryption (``KeyHolderClient.decrypt_agent``)."""

    def decrypt_agent(self, envelope: Envelope, *, key_binding: dict[str, Any]) -> DecryptedAgent: ...


class DecryptedAgent(Protocol):
    """The key holder's reply (``wire.messages.DecryptAgentResponse``)."""

    @property
    def agent(self) -> str: ...
    @property
    def round_id(self) -> str: ...
    @property
    def values(self) -> list[float]: ...
    @property
    def agent_decryptions(self) -> int: ...
    @property
    def audit_index(self) -> int: ...



def plain_vectors(envelopes: Mapping[str, Envelope]) -> dict[str, list[float]]:
    """tls-only: the scores signed in each envelope's header."""
    out: dict[str, list[float]] = {}
    for agent, env in envelopes.items():
        if env.kind != "plain" or env.scores is None:
            raise FusionError(f"{agent}: a {env.kind!r} envelope where tls-only expects 'plain'")
        out[agent] = list(env.scores)
    return out


def decrypt_vectors(envelopes: Mapping[str, Envelope], *, key_owner: CKKSKeyOwner, audit: AuditTrail,
                    round_id: str, actor: str = "server") -> tuple[dict[str, list[float]], int, dict[str, str]]:
    """ckks: decrypt each agent's vector with the server's key owner; audit every decryption.

    A vector that does not decrypt drops that agent only — (vectors, decryptions, refused) — and
    is audited (``decrypt.refused``), so one member cannot void a round the others answered.
    """
    out: dict[str, list[float]] = {}
    refused: dict[str, str] = {}
    total = 0
    for agent, env in sorted(envelopes.items()):
        if env.kind != "ckks" or env.context_sha256 is None:
            raise FusionError(f"{agent}: a {env.kind!r} envelope where ckks expects 'ckks'")
        sealed = SealedVector(env.ciphertexts, env.length, env.context_sha256)
        try:
            out[agent] = key_owner.decrypt(sealed)
        except IntegrityError:
            refused[agent] = "ciphertext does not decrypt under the server's context"
            audit.record(actor, "decrypt.refused", {"round_id": round_id, "agent": agent,
                                                    "envelope_sha256": env.sha256(), "reason": refused[agent]})
            continue
        total += len(sealed.chunks)
        audit.record(actor, "decrypt.agent", {
            "round_id": round_id, "agent": agent, "envelope_sha256": env.sha256(), "chunks": len(sealed.chunks),
            "decryptions_total": key_owner.decryptions,
        })
    return out, total, refused


def keyholder_vectors(envelopes: Mapping[str, Envelope], *, keyholder: AgentDecryptor,
                      key_bindings: Mapping[str, dict[str, Any] | None], audit: AuditTrail, round_id: str,
                      actor: str = "server") -> tuple[dict[str, list[float]], dict[str, str]]:
    """fused-only, public rounds: each agent's vector decrypted by the key holder; (vectors, refused).

    One request, and one audit entry (``keyholder.agent_decryption``, outcome ok or refused), per
    agent. A refusal drops that agent only (the round's quorum decides the rest).
    """
    out: dict[str, list[float]] = {}
    refused: dict[str, str] = {}
    for agent, env in sorted(envelopes.items()):
        record: dict[str, Any] = {"round_id": round_id, "agent": agent, "envelope_sha256": env.sha256()}
        binding = key_bindings.get(agent)
        try:
            if binding is None:
                raise KeyHolderError("the agent enrolled without a key binding, so the key holder cannot check its "
                                     "envelope key (update the agent and let it re-enrol)")
            reply = keyholder.decrypt_agent(env, key_binding=binding)
            if (reply.agent, reply.round_id, len(reply.values)) != (agent, round_id, env.length):
                raise KeyHolderError(f"reply is for {reply.agent} / {reply.round_id} with {len(reply.values)} values")
        except KeyHolderError as exc:
            refused[agent] = f"key holder: {exc}"
            audit.record(actor, "keyholder.agent_decryption", {**record, "outcome": "refused", "reason": str(exc)})
            continue
        out[agent] = list(reply.values)
        audit.record(actor, "keyholder.agent_decryption", {
            **record, "outcome": "ok", "keyholder_audit_index": reply.audit_index,
            "keyholder_agent_decryptions": reply.agent_decryptions})
    return out, refused
