"""fused-only public rounds, unit level: the key holder's own checks, the policy opt-in, the fusion maths.

Real material throughout: certificates from a test CA, Ed25519-signed envelopes, CKKS
ciphertexts decrypted by a real :class:`~crypto.ckks.CKKSKeyOwner` (in this process: the HTTP
path is covered by ``test_keyholder_public_rounds_process.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.memory_audit import MemoryAudit
from helpers.pki import TestPKI, make_pki

from crypto.ckks import CKKSKeyOwner, SealedVector
from crypto.envelope import Envelope, seal_scores
from crypto.key_binding import bind_signing_key
from crypto.signing import SigningKey
from policies import PolicyValidationError, builtin_policy_path, load_policy, parse_policy
from server.fusion import FusionInput, PrivacyModeError, ScoreRange
from server.keyholder.public_rounds import PublicRoundGate
from server.privacy_mode import privacy_mode_for
from server.rejections import Rejection
from server.router import LearnedRouter
from wire.calibration import Calibration


class InProcessKeyHolder:
    """The key holder's decrypt-fused contract on a real key owner (rounded, counted)."""

    def __init__(self, owner: CKKSKeyOwner) -> None:
        self.owner = owner

    def decrypt_fused(self, sealed: SealedVector, *, round_id: str) -> Any:
        from wire.messages import DecryptFusedResponse

        return DecryptFusedResponse(values=self.owner.decrypt(sealed), decryptions=self.owner.decryptions,
                                    audit_index=0)


@pytest.fixture(scope="module")
def owner() -> CKKSKeyOwner:
    return CKKSKeyOwner.generate()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _agent(pki: TestPKI, name: str) -> tuple[str, SigningKey, dict[str, str]]:
    party = pki.issue(name)
    key = SigningKey.generate()
    binding = bind_signing_key(key.verify_key(), cert_pem=party.cert.read_bytes(), tls_key_pem=party.key.read_bytes())
    return party.identity, key, binding


PUBLIC_SET = "ab" * 32  # the digest of a public round's content, as the policy publishes it


def _gate(pki: TestPKI, owner: CKKSKeyOwner, *, enabled: bool = True) -> PublicRoundGate:
    from server.admission import RevocationList

    return PublicRoundGate(enabled=enabled, ca_cert=pki.ca_cert, is_revoked=RevocationList(pki.crl, pki.ca_cert)
                           .is_revoked, context_sha256=owner.public_context.sha256, policy_source="policy.toml",
                           public_round_digests=frozenset({PUBLIC_SET}))


def _envelope(owner: CKKSKeyOwner, key: SigningKey, sender: str, round_id: str,
              payload_sha256: str | None = PUBLIC_SET) -> Envelope:
    return seal_scores([0.25, -1.5, 3.0], owner.public_context, signing_key=key, sender=sender, round_id=round_id,
                       task_id=f"{round_id}-t1", payload_sha256=payload_sha256)


def _refusal(gate: PublicRoundGate, envelope: dict[str, Any], binding: Any) -> Rejection:
    with pytest.raises(Rejection) as caught:
        gate.check(envelope, binding)
    return caught.value


# -- the key holder's own checks ------------------------------------------------------------------
def test_public_round_envelope_is_opened_with_the_agents_ca_bound_key(pki: TestPKI, owner: CKKSKeyOwner) -> None:
    identity, key, binding = _agent(pki, "alice")
    env = _envelope(owner, key, identity, "router-0123")
    checked, sealed = _gate(pki, owner).check(env.to_dict(), binding)
    assert (checked.sender, checked.round_id) == (identity, "router-0123")
    assert owner.decrypt(sealed) == pytest.approx([0.25, -1.5, 3.0], abs=1e-9)


def test_score_round_envelope_is_refused_even_when_genuine(pki: TestPKI, owner: CKKSKeyOwner) -> None:
    identity, key, binding = _agent(pki, "bob")
    refusal = _refusal(_gate(pki, owner), _envelope(owner, key, identity, "score-4567").to_dict(), binding)
    assert (refusal.status, refusal.code) == (403, "not_public_round")
    assert "'score-4567' is a 'score' round" in refusal.message and identity in refusal.message


def test_a_relabelled_round_whose_content_is_not_a_published_public_set_is_refused(
        pki: TestPKI, owner: CKKSKeyOwner) -> None:
    """A dishonest server names GRPO completions a router round; the member signed what it really scored."""
    identity, key, binding = _agent(pki, "frank")
    gate = _gate(pki, owner)
    for signed in ("cd" * 32, None):  # the digest of the completions it was sent, or an old agent's none
        refusal = _refusal(gate, _envelope(owner, key, identity, "router-feed", payload_sha256=signed).to_dict(),
                           binding)
        assert (refusal.status, refusal.code) == (403, "not_a_public_set") and "public_round_digests" in refusal.message
    tampered = {**_envelope(owner, key, identity, "router-feed", payload_sha256="cd" * 32).to_dict(),
                "payload_sha256": PUBLIC_SET}  # swapping in the public digest breaks the member's signature
    assert _refusal(gate, tampered, binding).code == "forged_envelope"


def test_forged_envelopes_and_substituted_keys_are_refused(pki: TestPKI, owner: CKKSKeyOwner) -> None:
    identity, key, binding = _agent(pki, "carol")
    gate = _gate(pki, owner)
    # a server re-wrapping carol's ciphertext under a key of its own, relabelled as a router round
    server_key = SigningKey.generate()
    forged = _envelope(owner, server_key, identity, "router-89ab")
    assert _refusal(gate, forged.to_dict(), binding).code == "forged_envelope"
    # ... and also substituting the binding: its own key is not bound to carol by the CA
    fake = {**binding, "signing_key_b64": bind_signing_key(
        server_key.verify_key(), cert_pem=pki.server.cert.read_bytes(),
        tls_key_pem=pki.server.key.read_bytes())["signing_key_b64"]}
    assert _refusal(gate, forged.to_dict(), fake).code == "bad_key_binding"
    # a genuine binding of another party (the server's own certificate) is not carol's
    own = bind_signing_key(server_key.verify_key(), cert_pem=pki.server.cert.read_bytes(),
                           tls_key_pem=pki.server.key.read_bytes())
    refusal = _refusal(gate, forged.to_dict(), own)
    assert refusal.code == "bad_key_binding" and f"the envelope's sender is {identity}" in refusal.message
    # a tampered round id breaks carol's own signature
    tampered = {**_envelope(owner, key, identity, "score-cdef").to_dict(), "round_id": "router-cdef"}
    assert _refusal(gate, tampered, binding).code == "forged_envelope"


def test_binding_from_a_foreign_ca_revoked_agents_and_opt_out_are_refused(pki: TestPKI, owner: CKKSKeyOwner,
                                                                          tmp_path: Path) -> None:
    foreign = make_pki(tmp_path / "foreign")
    identity, key, binding = _agent(foreign, "dave")
    env = _envelope(owner, key, identity, "calibrate-1")
    assert _refusal(_gate(pki, owner), env.to_dict(), binding).code == "bad_key_binding"

    identity, key, binding = _agent(pki, "erin")
    env = _envelope(owner, key, identity, "calibrate-2")
    refusal = _refusal(_gate(pki, owner, enabled=False), env.to_dict(), binding)
    assert refusal.code == "per_agent_disabled" and "public_rounds_per_agent" in refusal.message
    pki.revoke("erin")
    assert _refusal(_gate(pki, owner), env.to_dict(), binding).code == "revoked"


# -- the policy opt-in ----------------------------------------------------------------------------
_POLICY = """
consortium = "testnet"
[admission]
allow_all_certified = true
[privacy]
mode = "{mode}"
max_epsilon = 3.0
max_delta = 1e-6
{extra}
[rounds]
quorum = 1
deadline_s = 60
group_size = 2
prompts_per_round = 2
[audit]
retention_days = 30
"""


def test_policy_flag_defaults_off_healthcare_opts_in_and_ckks_refuses_it() -> None:
    assert parse_policy(_POLICY.format(mode="fused-only", extra="")).privacy.public_rounds_per_agent is False
    assert load_policy(builtin_policy_path("healthcare")).privacy.public_rounds_per_agent is True
    with pytest.raises(PolicyValidationError, match=r"privacy.public_rounds_per_agent: applies only to mode"):
        parse_policy(_POLICY.format(mode="ckks", extra="public_rounds_per_agent = true"), "p.toml")


def test_fused_only_without_the_opt_in_never_collects_per_agent(owner: CKKSKeyOwner) -> None:
    fusion = privacy_mode_for("fused-only", scores=ScoreRange(-10, 10), audit=MemoryAudit(),
                              context=owner.public_context,
                               keyholder=InProcessKeyHolder(owner))
    assert fusion.collects_public_rounds is False
    with pytest.raises(PrivacyModeError, match="public_rounds_per_agent"):
        fusion.collect("router-1", {})
    with pytest.raises(PrivacyModeError, match="only to fused-only"):
        privacy_mode_for("ckks", scores=ScoreRange(-10, 10), audit=MemoryAudit(), key_owner=owner,
                         public_rounds_per_agent=True)


# -- calibration inside the homomorphic fusion ----------------------------------------------------
def test_fused_only_and_ckks_give_the_same_calibrated_fused_reward(owner: CKKSKeyOwner) -> None:
    agents = ("mor://testnet/client/a", "mor://testnet/client/b", "mor://testnet/client/c")
    keys = {a: SigningKey.generate() for a in agents}
    router = LearnedRouter(agents, feature_dim=4, hidden=8, seed=2)
    with torch.no_grad():
        router.output_layer.weight.copy_(torch.randn(router.output_layer.weight.shape,
                                                     generator=torch.Generator().manual_seed(5)))
    features = torch.randn(5, 4, generator=torch.Generator().manual_seed(9))
    scores = {agents[0]: [0.1, 0.9, -0.3, 0.4, 0.0], agents[1]: [8.0, 9.5, 7.0, 9.0, 6.5],
              agents[2]: [-3.0, -1.0, -2.5, 0.5, -2.0]}
    calibrations = {agents[0]: Calibration(0.2, 0.5), agents[1]: Calibration(8.0, 1.25),
                    agents[2]: Calibration(-1.6, 1.5)}
    envelopes = {a: seal_scores(s, owner.public_context, signing_key=keys[a], sender=a, round_id="score-x",
                                task_id=f"t-{i}") for i, (a, s) in enumerate(scores.items())}
    inp = FusionInput("score-x", features, envelopes, calibrations)

    ckks = privacy_mode_for("ckks", scores=ScoreRange(-10, 10), audit=MemoryAudit(), key_owner=owner).fuse(router, inp)
    fused_only = privacy_mode_for("fused-only", scores=ScoreRange(-10, 10), audit=MemoryAudit(),
                                  context=owner.public_context,
                                   keyholder=InProcessKeyHolder(owner)).fuse(router, inp)
    uncalibrated = privacy_mode_for("fused-only", scores=ScoreRange(-10, 10), audit=MemoryAudit(),
                                    context=owner.public_context,
                                     keyholder=InProcessKeyHolder(owner)).fuse(
        router, FusionInput("score-x", features, envelopes))

    assert ckks.agents_used == fused_only.agents_used == agents and not fused_only.uncalibrated
    got, want = fused_only.rewards, ckks.rewards
    assert all(g is not None for g in got) and max(abs(g - w) for g, w in zip(got, want, strict=True)) < 2e-4  # type: ignore[operator]
    # calibration really is applied: without it the fused reward is on agent b's raw scale
    assert max(abs(u - w) for u, w in zip(uncalibrated.rewards, want, strict=True)) > 0.5  # type: ignore[operator]
