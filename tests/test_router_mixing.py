"""Issue #17's router and mixing options: each rule does what it claims, and weights stay prompt-only.

* group normalisation: a member's scale on a prompt no longer decides the group's ranking;
* conservative mixing: an answer the members disagree on is rewarded less than one with the
  same mean they agree on;
* shrinkage: the router's own weights where it saw similar prompts, uniform where it did not;
* online refinement: on-policy pairs move the router toward the member that ranks them right,
  as far as the prior allows;
* every router's fused reward is linear in the scores with weights fixed by the prompt alone;
* the policy refuses the plaintext-only rules under fused-only, naming the key.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_robust_fusion import AGENTS, RANGE, _policy, learned, plain

from policies import PolicyValidationError, parse_policy
from server.errors import FusionError, RouterConfigError, RouterInputError
from server.fusion import FusionInput, fuse_vectors
from server.robust_fusion import RobustFusion
from server.router import (
    LearnedRouter,
    MixingRule,
    OnlineConfig,
    RouterBase,
    RouterTrainingSet,
    ShrunkRouter,
    UniformRouter,
    conservative_mix,
    feature_groups,
    normalise_within_groups,
    refine_online,
)


# -- group normalisation ---------------------------------------------------------------------------------
def test_group_normalisation_stops_one_members_scale_from_deciding_the_ranking() -> None:
    # one prompt, 3 answers; member 0 prefers answer 0 by a huge margin, members 1 and 2 prefer answer 2 slightly
    scores = torch.tensor([[50.0, 0.0, 0.0], [0.0, 0.1, 0.1], [-50.0, 0.2, 0.2]])
    w = torch.full((3, 3), 1 / 3)
    groups = torch.zeros(3, dtype=torch.long)
    assert int(MixingRule().mix(w, scores).argmax()) == 0  # the loud member wins the plain sum
    mixed = MixingRule(group_normalise=True).mix(w, scores, groups)
    assert int(mixed.argmax()) == 2  # two of three members prefer answer 2 once each is on one scale
    normalised = normalise_within_groups(scores, groups)
    assert normalised.mean(0).abs().max() < 1e-12
    assert torch.allclose(normalised.std(0, unbiased=False), torch.ones(3, dtype=torch.float64))


def test_group_normalisation_is_per_group_and_a_flat_member_contributes_zero() -> None:
    s = torch.tensor([[1.0, 7.0], [3.0, 7.0], [10.0, 1.0], [30.0, 2.0]])
    out = normalise_within_groups(s, torch.tensor([0, 0, 1, 1]))
    assert out.tolist() == [[-1.0, 0.0], [1.0, 0.0], [-1.0, -1.0], [1.0, 1.0]]
    with pytest.raises(RouterInputError, match="needs the GRPO group"):
        MixingRule(group_normalise=True).mix(torch.full((4, 2), 0.5), s)


def test_feature_groups_finds_the_answers_to_one_prompt() -> None:
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    assert feature_groups(torch.stack([a, a, b, a, b])).tolist() == [0, 0, 1, 0, 1]


# -- conservative mixing ------------------------------------------------------------------------------------
def test_conservative_mix_penalises_disagreement_at_equal_mean() -> None:
    w = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    agreed, disputed = [1.0, 1.0], [3.0, -1.0]  # both have weighted mean 1
    out = conservative_mix(w, torch.tensor([agreed, disputed]), 0.5)
    assert out.tolist() == pytest.approx([1.0, 1.0 - 0.5 * 2.0])
    assert conservative_mix(w, torch.tensor([agreed, disputed]), 0.0).tolist() == pytest.approx([1.0, 1.0])
    # the spread is router-weighted: a member with weight 0 cannot create disagreement
    assert conservative_mix(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, -9.0]]), 1.0).tolist() == [2.0]


@pytest.mark.parametrize("bad", [-0.1, 11.0, math.nan, True, "1"])
def test_mixing_rule_refuses_bad_penalties(bad: object) -> None:
    with pytest.raises(RouterConfigError, match="disagreement_penalty must be a number in \\[0, 10\\]"):
        MixingRule(disagreement_penalty=bad)  # type: ignore[arg-type]


# -- in the server's fusion (tls-only / ckks path) -----------------------------------------------------------
def test_fuse_vectors_applies_group_normalisation_and_penalty_by_prompt_feature_groups() -> None:
    router = learned()
    features = torch.cat([FEAT_A.expand(3, -1), FEAT_B.expand(2, -1)])
    raw = {AGENTS[0]: [9.0, 0.0, -9.0, 1.0, 2.0], AGENTS[1]: [0.0, 0.1, 0.2, 5.0, 5.0],
           AGENTS[2]: [0.3, 0.2, 0.1, 0.0, 1.0]}
    inp = FusionInput("score-r1", features, plain(raw))
    robust = RobustFusion(group_normalise=True, disagreement_penalty=0.5)
    out = fuse_vectors(router, inp, raw, RANGE, {}, 0, robust)
    w = router.weights(features, list(AGENTS)).double()
    s = torch.tensor([raw[a] for a in AGENTS], dtype=torch.float64).T
    expected = conservative_mix(w, normalise_within_groups(s, torch.tensor([0, 0, 0, 1, 1])), 0.5)
    assert out.rewards == pytest.approx(expected.tolist())
    assert fuse_vectors(router, inp, raw, RANGE, {}, 0).rewards == pytest.approx((w * s).sum(1).tolist())


def test_penalty_cannot_ride_on_a_robust_aggregate_and_fused_only_refuses_both_rules() -> None:
    with pytest.raises(FusionError, match="cannot be combined with aggregate = 'median'"):
        RobustFusion(aggregate="median", disagreement_penalty=1.0)
    assert "group_normalise = true" in str(RobustFusion(group_normalise=True).refusal_for(
        "fused-only", per_member_plaintext=False))
    for fusion, key in (("group_normalise = true", "fusion.group_normalise"),
                        ("disagreement_penalty = 0.5", "fusion.disagreement_penalty")):
        with pytest.raises(PolicyValidationError) as caught:
            parse_policy(_policy("healthcare", fusion), "healthcare.toml")  # healthcare is fused-only
        assert caught.value.problems[0].startswith(key) and "plaintext score" in caught.value.problems[0]
    with pytest.raises(PolicyValidationError, match="fusion.disagreement_penalty: replaces the weighted sum"):
        parse_policy(_policy("finance", 'aggregate = "median"\ndisagreement_penalty = 1.0'), "finance.toml")


# -- shrinkage toward uniform -------------------------------------------------------------------------------
FEAT_A = torch.tensor([[2.0, 0.0, 0.0, 1.0]])
FEAT_B = torch.tensor([[0.0, 2.0, 1.0, 0.0]])


def test_shrinkage_keeps_the_router_near_its_evidence_and_is_uniform_far_from_it() -> None:
    inner = learned()
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([FEAT_A + 0.2 * torch.randn(20, 4, generator=g),
                         FEAT_B + 0.2 * torch.randn(20, 4, generator=g)])
    shrunk = ShrunkRouter(inner, anchors, kappa=1.0, bandwidth=0.1)
    near, far = FEAT_A, torch.tensor([[0.0, 0.0, -3.0, -3.0]])  # far: orthogonal to both clusters
    assert float(shrunk.trust(near)) > 0.9 > 0.05 > float(shrunk.trust(far))
    w_near, w_far = shrunk.weights(near, list(AGENTS)), shrunk.weights(far, list(AGENTS))
    assert torch.allclose(w_near, inner.weights(near, list(AGENTS)).double(), atol=0.1)
    assert torch.allclose(w_far, torch.full((1, 3), 1 / 3, dtype=torch.float64), atol=0.05)
    assert (w_far.max() - w_far.min()) < (inner.weights(far, list(AGENTS)).max() - inner.weights(far, list(AGENTS))
                                          .min())
    strong = ShrunkRouter(inner, anchors, kappa=1000.0, bandwidth=0.1)  # a large kappa asks for more evidence
    assert float(strong.trust(near)) < 0.05
    assert shrunk.digest() != strong.digest() != inner.digest()
    with pytest.raises(RouterConfigError, match="kappa must be a number in \\(0, 1e\\+06\\]"):
        ShrunkRouter(inner, anchors, kappa=0.0)


# -- online refinement ---------------------------------------------------------------------------------------
def _on_policy_pairs(n: int = 64) -> RouterTrainingSet:
    """On-policy pairs where only agent 0 ranks the answers right; the features are one domain."""
    g = torch.Generator().manual_seed(3)
    features = FEAT_B + 0.05 * torch.randn(n, 4, generator=g)
    good = torch.rand(n, generator=g) + 0.5
    chosen = torch.stack([good, -good, torch.zeros(n)], dim=1)
    rejected = torch.stack([-good, good, torch.zeros(n)], dim=1)
    return RouterTrainingSet(AGENTS, features, chosen, rejected, torch.ones(n, 3, dtype=torch.bool))


def test_online_refinement_moves_weight_to_the_member_right_on_policy_samples_as_far_as_the_prior_allows() -> None:
    data = _on_policy_pairs()
    router = LearnedRouter(AGENTS, feature_dim=4, hidden=8, seed=0)  # unfitted: exactly uniform
    before = router.weights(FEAT_B, list(AGENTS))
    report = refine_online(router, data, OnlineConfig(steps=80, learning_rate=0.05, prior_coef=0.0, uniform_kl=0.0))
    after = router.weights(FEAT_B, list(AGENTS))
    assert report["accuracy_after"] > report["accuracy_before"] and report["accuracy_after"] == 1.0
    assert float(after[0, 0]) > float(before[0, 0]) + 0.3
    anchored = LearnedRouter(AGENTS, feature_dim=4, hidden=8, seed=0)
    tight = refine_online(anchored, data, OnlineConfig(steps=80, learning_rate=0.05, prior_coef=1000.0))
    assert tight["parameter_shift"] < report["parameter_shift"] / 10
    pulled = LearnedRouter(AGENTS, feature_dim=4, hidden=8, seed=0)
    refine_online(pulled, data, OnlineConfig(steps=80, learning_rate=0.05, prior_coef=0.0, uniform_kl=5.0))
    assert float(pulled.weights(FEAT_B, list(AGENTS))[0, 0]) < float(after[0, 0])  # KL pulls toward 1/3
    with pytest.raises(RouterInputError, match="on-policy pairs are for agents"):
        refine_online(LearnedRouter(("x", "y", "z"), feature_dim=4, hidden=8), data)
    with pytest.raises(RouterConfigError, match="steps must be an integer"):
        OnlineConfig(steps=0)


# -- the weights are a function of the prompt only -------------------------------------------------------------
def _implied_weights(router: RouterBase, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Back the weights out of ``fuse``: column k of the identity as scores gives w_k; check linearity on ``scores``."""
    n = len(features)
    cols = [router.fuse(features, {a: torch.full((n,), float(j == k), dtype=torch.float64)
                                   for j, a in enumerate(AGENTS)}) for k in range(len(AGENTS))]
    w = torch.stack(cols, dim=1)
    fused = router.fuse(features, {a: scores[:, k] for k, a in enumerate(AGENTS)})
    assert torch.allclose(fused, (w * scores).sum(1), atol=1e-6)  # the same weights whatever the answers' scores
    return w


@pytest.mark.parametrize("kind", ["uniform", "learned", "shrunk", "online"])
def test_weights_depend_on_the_prompt_only(kind: str) -> None:
    base = learned()
    router: RouterBase = {"uniform": UniformRouter(AGENTS), "learned": base,
                          "shrunk": ShrunkRouter(base, FEAT_A.expand(4, -1) + torch.arange(4.0).unsqueeze(1) / 10),
                          "online": base}[kind]
    if kind == "online":
        refine_online(base, _on_policy_pairs(), OnlineConfig(steps=5))
    features = torch.cat([FEAT_A, FEAT_A, FEAT_B])
    g = torch.Generator().manual_seed(7)
    w1 = _implied_weights(router, features, torch.randn(3, 3, generator=g, dtype=torch.float64))
    w2 = _implied_weights(router, features, 100 * torch.randn(3, 3, generator=g, dtype=torch.float64))
    assert torch.allclose(w1, w2) and torch.allclose(w1[0], w1[1])  # same prompt, same weights, any answers
    assert torch.allclose(w1, router.weights(features, list(AGENTS)).double(), atol=1e-6)
    if kind != "uniform":
        assert not torch.allclose(w1[0], w1[2])  # ... and they do depend on the prompt
