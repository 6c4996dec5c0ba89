"""Robust fusion (issue 14 §2): each ``[fusion]`` option changes the fused reward as the policy claims.

The cap holds for every router and in fused-only (weights are plaintext there); clipping bounds
every calibrated score; the weighted median resists one member scaled x100; trimming drops the
extremes; fused-only refuses what it cannot apply; policy errors name the key and the reason;
and the published degradation script, run small, shows robust fusion degrading less than plain.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers.memory_audit import MemoryAudit

from crypto.ckks import CKKSKeyOwner
from crypto.envelope import Envelope, sign_plain_scores
from crypto.signing import SigningKey
from policies import InsecurePolicyWarning, PolicyValidationError, builtin_policy_path, parse_policy, render_toml
from server.errors import FusionError, PrivacyModeError, RouterConfigError
from server.fusion import FusionInput, ScoreRange, fuse_vectors
from server.privacy_mode import CkksMode, privacy_mode_for
from server.robust_fusion import RobustFusion, trimmed_mean, weighted_median
from server.router import CappedRouter, FixedRouter, LearnedRouter, UniformRouter, cap_router
from server.wiring import service_policy_of
from sim.eval.robustness import RobustnessConfig, kendall_tau_b, run
from wire.calibration import Calibration

AGENTS = ("mor://t/client/a", "mor://t/client/b", "mor://t/client/c")
RANGE = ScoreRange(-10.0, 10.0)
FEATURES = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))


def learned(agents: tuple[str, ...] = AGENTS, seed: int = 1) -> LearnedRouter:
    """An input-dependent learned router with some very uneven rows."""
    router = LearnedRouter(agents, feature_dim=4, hidden=8, seed=seed)
    with torch.no_grad():
        router.output_layer.weight.copy_(4 * torch.randn(router.output_layer.weight.shape,
                                                         generator=torch.Generator().manual_seed(seed)))
    return router


def plain(scores: dict[str, list[float]]) -> dict[str, Envelope]:
    return {a: sign_plain_scores(s, signing_key=SigningKey.generate(), sender=a, round_id="score-r1", task_id=f"t{i}")
            for i, (a, s) in enumerate(scores.items())}


# -- the cap ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cap", [0.34, 0.4, 0.5, 0.9])
def test_cap_holds_in_every_row_and_keeps_the_uncapped_ratios(cap: float) -> None:
    inner = learned()
    assert float(inner.weights(FEATURES, list(AGENTS)).max()) > 0.9  # something for the cap to do
    w = CappedRouter(inner, cap).weights(FEATURES, list(AGENTS))
    assert torch.allclose(w.sum(1), torch.ones(5, dtype=w.dtype))
    assert float(w.max()) <= cap + 1e-9
    raw = inner.weights(FEATURES, list(AGENTS)).double()
    for row in range(5):
        free = (raw[row] < cap).nonzero().flatten().tolist()
        if len(free) == 2 and float(w[row, free].max()) < cap - 1e-9:  # both below the cap: ratio kept
            assert torch.isclose(w[row, free[0]] / w[row, free[1]], raw[row, free[0]] / raw[row, free[1]])


def test_cap_applies_to_fused_only_weights_and_the_fused_reward() -> None:
    capped = CappedRouter(FixedRouter({"a": 8, "b": 1, "c": 1}), 0.4)
    w = capped.weights_for_fused_only(torch.zeros(2, 1), ["a", "b", "c"])
    assert w.dtype == torch.float64 and w[0].tolist() == pytest.approx([0.4, 0.3, 0.3])
    scores = {"a": torch.tensor([10.0, 10.0]), "b": torch.zeros(2), "c": torch.zeros(2)}
    assert capped.fuse(torch.zeros(2, 1), scores).tolist() == pytest.approx([4.0, 4.0])  # uncapped: 8.0


def test_cap_when_too_few_answered_is_equal_weights_and_unset_cap_is_no_wrapper() -> None:
    capped = CappedRouter(FixedRouter({"a": 8, "b": 1, "c": 1}), 0.4)
    assert capped.weights(torch.zeros(1, 1), ["a", "b"])[0].tolist() == pytest.approx([0.5, 0.5])
    router = UniformRouter(AGENTS)
    assert cap_router(router, None) is router
    wrapped = cap_router(router, 0.5)
    assert isinstance(wrapped, CappedRouter) and wrapped.inner_kind == "uniform"
    assert wrapped.digest() != router.digest() != CappedRouter(router, 0.6).digest()
    for bad in (0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(RouterConfigError, match="max_weight must be a number in"):
            CappedRouter(router, bad)


# -- clip and aggregates through the mode objects -------------------------------------------------------
def _fuse(robust: RobustFusion, scores: dict[str, list[float]]) -> list[float]:
    """tls-only's mode object, uniform weights, every member calibrated to z = 10 * score."""
    fusion = privacy_mode_for("tls-only", scores=RANGE, audit=MemoryAudit(), robust=robust)
    inp = FusionInput("score-r1", torch.zeros(len(next(iter(scores.values()))), 1), plain(scores),
                      {a: Calibration(0.0, 0.1) for a in scores})
    rewards = fusion.fuse(UniformRouter(AGENTS), inp).rewards
    assert all(r is not None for r in rewards)
    return [float(r) for r in rewards if r is not None]


def test_clip_bounds_every_calibrated_score_and_counts_it() -> None:
    scores = {AGENTS[0]: [9.0, -9.0, 0.1], AGENTS[1]: [0.1, 0.0, 0.0], AGENTS[2]: [0.0, 0.0, 0.0]}
    plain_rewards = _fuse(RobustFusion(), scores)
    clipped = _fuse(RobustFusion(clip_z=2.0), scores)
    assert plain_rewards[0] == pytest.approx((90 + 1) / 3)  # z = 90 unbounded
    assert clipped == pytest.approx([(2 + 1) / 3, -2 / 3, 1 / 3])
    fusion = privacy_mode_for("tls-only", scores=RANGE, audit=MemoryAudit(), robust=RobustFusion(clip_z=2.0))
    outcome = fusion.fuse(UniformRouter(AGENTS), FusionInput("score-r1", torch.zeros(3, 1), plain(scores),
                                                             {a: Calibration(0.0, 0.1) for a in scores}))
    assert outcome.clipped == {f"{AGENTS[0]}:clip_z": 2}


def test_median_resists_one_member_scaled_x100() -> None:
    honest = {AGENTS[1]: [0.10, 0.20, 0.30], AGENTS[2]: [0.12, 0.18, 0.33]}
    attacked = {AGENTS[0]: [9.0, -9.0, 0.0], **honest}  # in range, but x100 its honest deviations
    weighted = _fuse(RobustFusion(), attacked)
    median = _fuse(RobustFusion(aggregate="median"), attacked)
    assert weighted[0] > 30 and weighted[1] < -25  # the attacker decides the order
    for j, value in enumerate(median):
        low, high = sorted(v[j] / 0.1 for v in honest.values())
        assert low - 1e-9 <= value <= high + 1e-9  # bounded by the honest members' own scores
    assert median[0] < median[1] < median[2]  # the honest order survives


def test_weighted_default_is_exactly_the_router_and_aggregates_by_hand() -> None:
    router = learned()
    vectors = {a: torch.randn(5, generator=torch.Generator().manual_seed(i)).tolist() for i, a in enumerate(AGENTS)}
    inp = FusionInput("score-r1", FEATURES, {}, {})
    outcome = fuse_vectors(router, inp, vectors, RANGE, {}, 0)
    expected = router.fuse(FEATURES, {a: torch.tensor(v) for a, v in vectors.items()})
    assert outcome.rewards == pytest.approx(expected.tolist())
    w = torch.tensor([[0.2, 0.2, 0.6], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    s = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, -1.0, 0.0]], dtype=torch.float64)
    assert weighted_median(w, s).tolist() == pytest.approx([3.0, 1.5, 0.0])
    s4 = torch.tensor([[100.0, 1.0, 2.0, -100.0]], dtype=torch.float64)
    assert trimmed_mean(torch.full((1, 4), 0.25, dtype=torch.float64), s4, 1).tolist() == pytest.approx([1.5])
    assert RobustFusion(aggregate="trimmed").combine(w[:1, :2] / 0.4, s[:1, :2]).tolist() == pytest.approx([1.5])


def test_robust_fusion_refuses_bad_values_and_fused_only_refuses_what_it_cannot_apply() -> None:
    for bad in ({"clip_z": 0}, {"clip_z": float("inf")}, {"aggregate": "mean"}, {"trim": 0}):
        with pytest.raises(FusionError, match="robust fusion"):
            RobustFusion(**bad)  # type: ignore[arg-type]
    owner = CKKSKeyOwner.generate()
    for robust, named in ((RobustFusion(clip_z=3.0), "clip_z = 3.0"), (RobustFusion(aggregate="median"), "median")):
        with pytest.raises(PrivacyModeError, match=f"fused-only: .*{named}.* need each member's plaintext score"):
            privacy_mode_for("fused-only", scores=RANGE, audit=MemoryAudit(), context=owner.public_context,
                             keyholder=object(), robust=robust)  # type: ignore[arg-type]
    ckks = privacy_mode_for("ckks", scores=RANGE, audit=MemoryAudit(), key_owner=owner,
                            robust=RobustFusion(aggregate="median"))
    assert isinstance(ckks, CkksMode) and ckks.robust.aggregate == "median"


# -- the policy ------------------------------------------------------------------------------------------------
def _policy(name: str, fusion: str) -> str:
    return builtin_policy_path(name).read_text("utf-8") + "\n[fusion]\n" + fusion


@pytest.mark.parametrize(("name", "fusion", "problem"), [
    ("healthcare", "clip_z = 3.0", "fusion.clip_z: clipping needs each member's plaintext score, and under "
                                   "fused-only"),
    ("healthcare", 'aggregate = "median"', "fusion.aggregate: 'median' needs each member's plaintext score"),
    ("healthcare", "max_member_weight = 0.3", "fusion.max_member_weight: 0.3 x rounds.quorum (3) < 1: a round "
                                              "fused with 3 member(s) cannot keep each at most 0.3; use >= 0.3333"),
    ("finance", 'aggregate = "trimmed"', "fusion.trim: trimming 1 member(s) from each end needs more than 2 "
                                         "members, but rounds.quorum = 2"),
    ("finance", "trim = 2", "fusion.trim: applies only to aggregate = 'trimmed'"),
    ("finance", "clip_z = -1.0", "fusion.clip_z: must be > 0 (got -1)"),
    ("finance", "max_member_weight = 1.5", "fusion.max_member_weight: must be <= 1 (got 1.5)"),
    ("finance", 'aggregate = "mean"', "fusion.aggregate: must be one of 'weighted', 'trimmed' or 'median'"),
    ("finance", "clipz = 3.0", "fusion.clipz: unknown key (did you mean 'clip_z'?)"),
])
def test_policy_errors_name_the_key_and_the_reason(name: str, fusion: str, problem: str) -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(_policy(name, fusion), f"{name}.toml")
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(problem)


def test_policy_values_reach_the_service_and_round_trip_through_policy_check() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        policy = parse_policy(_policy("finance", "max_member_weight = 0.5\nclip_z = 4.0\naggregate = \"median\"\n"))
        default = parse_policy(builtin_policy_path("finance").read_text("utf-8"))
    assert (default.fusion.max_member_weight, default.fusion.clip_z, default.fusion.aggregate) == (None, None,
                                                                                                   "weighted")
    text = render_toml(policy)
    assert "[fusion]\nmax_member_weight = 0.5\nclip_z = 4.0\naggregate = \"median\"\n# trim is not set" in text
    assert parse_policy(text).digest() == policy.digest() != default.digest()
    service = service_policy_of(policy)
    assert (service.max_member_weight, service.clip_z, service.aggregate) == (0.5, 4.0, "median")
    ok = parse_policy(_policy("healthcare", "max_member_weight = 0.4"))  # the cap is fine in fused-only
    assert ok.fusion.max_member_weight == 0.4


# -- the published degradation curve ------------------------------------------------------------------------
def test_kendall_tau_b() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    y = torch.tensor([[2.0, 3.0, 4.0, 9.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    assert kendall_tau_b(x, y).tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert float(kendall_tau_b(torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]]))) == pytest.approx(
        2 / (2 * 3) ** 0.5)


def test_robustness_script_smoke_robust_degrades_less_than_plain_under_x100() -> None:
    config = RobustnessConfig(members=(3,), groups=40, router_pairs=120, fit_epochs=15, calibration_items=64)
    table = run(config)["3"]
    assert isinstance(table, dict)
    plain_cell, robust_cell = table["learned"]["scale-x100"], table["learned + robust"]["scale-x100"]
    assert robust_cell["tau"] > plain_cell["tau"] + 0.05  # the fused ranking moves less
    assert abs(robust_cell["adv_shift"]) < abs(plain_cell["adv_shift"])  # and so does GRPO's push
    assert table["uniform"]["boost-domain"]["tau"] == pytest.approx(1.0)  # a per-prompt shift: GRPO-invisible
