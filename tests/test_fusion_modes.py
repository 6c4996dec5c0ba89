"""Privacy-mode fusion on real CKKS ciphertexts.

The fused-only key holder runs as a separate ``mor keyholder serve`` process over real mutual
TLS: this test process only ever holds the public context it fetched from it, so fused-only
fusion demonstrably needs no secret key on the server side. All three modes must agree with a plaintext reference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import httpx
import pytest
import torch
from helpers.memory_audit import MemoryAudit
from helpers.pki import TestPKI, make_pki
from helpers.procs import ServiceProcess, free_port, start_keyholder, write_keyholder_config

from crypto.ckks import CKKSKeyOwner, PublicContext
from crypto.envelope import Envelope, seal_scores, sign_plain_scores
from crypto.signing import SigningKey
from server.fusion import FusionInput, PrivacyModeError, ScoreRange
from server.keyholder.client import KeyHolderClient
from server.privacy_mode import privacy_mode_for
from server.router import LearnedRouter
from wire.calibration import Calibration

AGENTS = ("mor://testnet/client/alice", "mor://testnet/client/bob", "mor://testnet/client/carol")
DIM = 8


@pytest.fixture(scope="module")
def keyholder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestPKI, ServiceProcess]]:
    """A real ``mor keyholder serve`` (its own secret key and audit log), rate limit far above the tests' load."""
    tmp = tmp_path_factory.mktemp("kh")
    pki = make_pki(tmp)
    config = write_keyholder_config(tmp, pki, port=free_port(), requests_per_s=1000.0)
    with start_keyholder(config) as service:
        yield pki, service


@pytest.fixture(scope="module")
def owner() -> CKKSKeyOwner:
    return CKKSKeyOwner.generate()


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {a: SigningKey.generate() for a in AGENTS}


def input_dependent_router(agents: Sequence[str] = AGENTS) -> LearnedRouter:
    router = LearnedRouter(agents, feature_dim=DIM, hidden=16, seed=1)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        router.output_layer.weight.copy_(torch.randn(router.output_layer.weight.shape, generator=gen))
    return router


FEATURES = torch.randn(6, DIM, generator=torch.Generator().manual_seed(3))
SCORES = {AGENTS[0]: [1.0, 2.0, -1.0, 0.5, 3.0, 0.0], AGENTS[1]: [4.0, 4.5, 3.0, 5.0, 6.0, 2.0],
          AGENTS[2]: [-2.0, 0.0, 1.0, -1.0, 2.0, 0.25]}
CALIBRATIONS = {AGENTS[0]: Calibration(1.0, 2.0), AGENTS[1]: Calibration(4.0, 1.5), AGENTS[2]: Calibration(0.0, 1.0)}
RANGE = ScoreRange(-10.0, 10.0, "refuse")


def sealed(scores: dict[str, list[float]], context: PublicContext, keys: dict[str, SigningKey],
           round_id: str = "score-r1") -> dict[str, Envelope]:
    return {a: seal_scores(s, context, signing_key=keys[a], sender=a, round_id=round_id, task_id=f"t-{a}")
            for a, s in scores.items()}


def plain(scores: dict[str, list[float]], keys: dict[str, SigningKey]) -> dict[str, Envelope]:
    return {a: sign_plain_scores(s, signing_key=keys[a], sender=a, round_id="score-r1", task_id=f"t-{a}")
            for a, s in scores.items()}


def reference(router: LearnedRouter, scores: dict[str, list[float]], cals: dict[str, Calibration]) -> list[float]:
    """The fused reward by hand: renormalised router weights x calibrated scores."""
    agents = [a for a in router.agents if a in scores]
    w = router.weights(FEATURES, agents).double()
    z = torch.tensor([[(s - cals[a].mean) / cals[a].std for s in scores[a]] for a in agents], dtype=torch.float64)
    return (w * z.T).sum(1).tolist()


def keyholder_decryptions(pki: TestPKI, service: ServiceProcess) -> int:
    reply = httpx.get(service.url("/v1/keyholder/status"), verify=pki.server.client_context())
    return int(reply.json()["decryptions"])


def test_three_modes_agree_with_the_reference(keyholder: tuple[TestPKI, ServiceProcess], owner: CKKSKeyOwner,
                                              keys: dict[str, SigningKey]) -> None:
    pki, service = keyholder
    router = input_dependent_router()
    want = reference(router, SCORES, CALIBRATIONS)
    assert max(want) - min(want) > 0.5  # a meaningful, input-dependent fused reward
    audit = MemoryAudit()

    tls = privacy_mode_for("tls-only", scores=RANGE, audit=audit).fuse(
        router, FusionInput("score-r1", FEATURES, plain(SCORES, keys), CALIBRATIONS))
    ckks = privacy_mode_for("ckks", scores=RANGE, audit=audit, key_owner=owner).fuse(
        router, FusionInput("score-r1", FEATURES, sealed(SCORES, owner.public_context, keys), CALIBRATIONS))
    assert audit.actions() == ["decrypt.agent"] * 3  # every per-agent decryption is on the record

    with KeyHolderClient(service.base_url, pki.server.client_context()) as client:
        context = client.public_context()  # public only: load_public_context refuses a secret key
        before = keyholder_decryptions(pki, service)
        fused_only = privacy_mode_for("fused-only", scores=RANGE, audit=audit, context=context, keyholder=client).fuse(
            router, FusionInput("score-r1", FEATURES, sealed(SCORES, context, keys), CALIBRATIONS))
    assert keyholder_decryptions(pki, service) - before == 1  # one fused vector decrypted, no per-agent one
    assert audit.actions()[-1] == "decrypt.fused" and audit.entries[-1][2]["agents"] == list(AGENTS)

    for outcome in (tls, ckks, fused_only):
        assert outcome.agents_used == AGENTS and not outcome.refused
        assert len(outcome.rewards) == 6
        assert max(abs(g - w) for g, w in zip(outcome.rewards, want, strict=True)) < 1e-3  # type: ignore[operator]
        assert sum(outcome.weights.values()) == pytest.approx(1.0, abs=1e-6)
    assert tls.rewards == pytest.approx(want, abs=1e-9)


def test_missing_agent_is_renormalised_away(owner: CKKSKeyOwner, keys: dict[str, SigningKey]) -> None:
    router = input_dependent_router()
    two = {a: SCORES[a] for a in AGENTS[:2]}
    outcome = privacy_mode_for("ckks", scores=RANGE, audit=MemoryAudit(), key_owner=owner).fuse(
        router, FusionInput("score-r1", FEATURES, sealed(two, owner.public_context, keys), CALIBRATIONS))
    assert outcome.agents_used == AGENTS[:2]
    full = router.weights(FEATURES, list(AGENTS))
    ratio = (full[:, 0] / full[:, 1]).mean().item()
    assert outcome.weights[AGENTS[0]] + outcome.weights[AGENTS[1]] == pytest.approx(1.0)
    pair = router.weights(FEATURES, list(AGENTS[:2]))
    assert (pair[:, 0] / pair[:, 1]).mean().item() == pytest.approx(ratio, rel=1e-5)  # ratios kept
    assert outcome.rewards == pytest.approx(reference(router, two, CALIBRATIONS), abs=1e-3)


def test_out_of_range_scores_are_refused_or_clipped(keys: dict[str, SigningKey]) -> None:
    router = input_dependent_router()
    bad = {**SCORES, AGENTS[2]: [50.0, 0.0, 0.0, 0.0, 0.0, 0.0]}
    refused = privacy_mode_for("tls-only", scores=RANGE, audit=MemoryAudit()).fuse(
        router, FusionInput("score-r1", FEATURES, plain(bad, keys), CALIBRATIONS))
    assert refused.agents_used == AGENTS[:2] and "outside" in refused.refused[AGENTS[2]]
    assert refused.rewards == pytest.approx(reference(router, {a: SCORES[a] for a in AGENTS[:2]}, CALIBRATIONS))

    clipped = privacy_mode_for("tls-only", scores=ScoreRange(-10, 10, "clip"), audit=MemoryAudit()).fuse(
        router, FusionInput("score-r1", FEATURES, plain(bad, keys), CALIBRATIONS))
    assert clipped.agents_used == AGENTS and clipped.clipped == {AGENTS[2]: 1}
    assert clipped.rewards == pytest.approx(reference(router, {**bad, AGENTS[2]: [10.0] + bad[AGENTS[2]][1:]},
                                                      CALIBRATIONS))


def test_fused_only_refuses_items_outside_the_convex_bound(keyholder: tuple[TestPKI, ServiceProcess],
                                                           keys: dict[str, SigningKey]) -> None:
    pki, service = keyholder
    router = input_dependent_router()
    bad = {**SCORES, AGENTS[1]: [1e4, 4.5, 3.0, 5.0, 6.0, 2.0]}  # hidden inside a ciphertext
    with KeyHolderClient(service.base_url, pki.server.client_context()) as client:
        context = client.public_context()
        fusion = privacy_mode_for("fused-only", scores=RANGE, audit=MemoryAudit(), context=context, keyholder=client)
        outcome = fusion.fuse(router, FusionInput("score-r2", FEATURES, sealed(bad, context, keys, "score-r2"),
                                                  CALIBRATIONS))
    want = reference(router, SCORES, CALIBRATIONS)
    assert outcome.rewards[0] is None and outcome.clipped == {"fused": 1}
    assert outcome.rewards[1:] == pytest.approx(want[1:], abs=1e-3)


def test_fused_only_holds_no_secret_and_never_opens_one_agent(owner: CKKSKeyOwner) -> None:
    with pytest.raises(PrivacyModeError, match="must not hold"):
        privacy_mode_for("fused-only", scores=RANGE, audit=MemoryAudit(), key_owner=owner, context=owner.public_context,
               keyholder=object())  # type: ignore[arg-type]
    fusion = privacy_mode_for("fused-only", scores=RANGE, audit=MemoryAudit(), context=owner.public_context,
                               keyholder=object())  # type: ignore[arg-type]
    with pytest.raises(PrivacyModeError, match="never decrypted"):
        fusion.collect("router-1", {})
    with pytest.raises(PrivacyModeError, match="CKKSKeyOwner is required"):
        privacy_mode_for("ckks", scores=RANGE, audit=MemoryAudit())


def test_wrong_length_and_unknown_agents_are_refused(owner: CKKSKeyOwner, keys: dict[str, SigningKey]) -> None:
    router = input_dependent_router(AGENTS[:2])
    scores = {**SCORES, AGENTS[0]: SCORES[AGENTS[0]][:5]}
    outcome = privacy_mode_for("ckks", scores=RANGE, audit=MemoryAudit(), key_owner=owner).fuse(
        router, FusionInput("score-r1", FEATURES, sealed(scores, owner.public_context, keys), CALIBRATIONS))
    assert outcome.agents_used == (AGENTS[1],)
    assert outcome.refused == {AGENTS[0]: "5 scores for 6 items", AGENTS[2]: "not an agent of the current router"}
    assert outcome.decryptions == 1  # refused envelopes are never decrypted
