"""Uniform and fixed routers, the shared interface (renormalisation, fuse, fused-only) and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from server.router import (
    FixedRouter,
    LearnedRouter,
    Router,
    RouterConfigError,
    RouterError,
    RouterInputError,
    UniformRouter,
    make_router,
)

AGENTS = ("hospital", "bank", "newsroom")
X = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))


def test_uniform_renormalises_over_the_agents_that_answered() -> None:
    router = UniformRouter(AGENTS)
    assert torch.allclose(router.weights(X, AGENTS), torch.full((5, 3), 1 / 3))
    w = router.weights(X, ["newsroom", "hospital"])
    assert w.shape == (5, 2)
    assert torch.allclose(w, torch.full((5, 2), 0.5))


def test_fixed_renormalises_and_keeps_ratios_in_the_order_asked() -> None:
    router = FixedRouter({"hospital": 1.0, "bank": 2.0, "newsroom": 3.0})
    assert router.shares == pytest.approx({"hospital": 1 / 6, "bank": 2 / 6, "newsroom": 3 / 6})
    w = router.weights(X, ["newsroom", "hospital"])  # the bank did not answer
    assert torch.allclose(w.sum(1), torch.ones(5))
    assert torch.allclose(w[:, 0] / w[:, 1], torch.full((5,), 3.0))
    assert w[0].tolist() == pytest.approx([0.75, 0.25])


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"a": -0.1, "b": 1.0}, "weight of 'a' must be a finite number >= 0"),
        ({"a": math.nan, "b": 1.0}, "weight of 'a'"),
        ({"a": math.inf, "b": 1.0}, "weight of 'a'"),
        ({"a": True, "b": 1.0}, "weight of 'a'"),
        ({"a": "1", "b": 1.0}, "weight of 'a'"),
        ({"a": 0.0, "b": 0}, "sum to 0"),
        ({}, "non-empty mapping"),
    ],
)
def test_fixed_router_refuses_bad_weights(weights: dict, message: str) -> None:
    with pytest.raises(RouterConfigError, match=message):
        FixedRouter(weights)


def test_fixed_router_weights_must_name_exactly_the_agents() -> None:
    with pytest.raises(RouterConfigError, match=r"missing \['c'\], unknown \[\]"):
        FixedRouter({"a": 1.0, "b": 1.0}, agents=["a", "b", "c"])
    with pytest.raises(RouterConfigError, match=r"missing \[\], unknown \['z'\]"):
        make_router("fixed", ["a", "b"], weights={"a": 1.0, "b": 1.0, "z": 1.0})


def test_fixed_router_with_no_weight_left_among_the_answering_agents_fails_loudly() -> None:
    router = FixedRouter({"a": 1.0, "b": 0.0})
    with pytest.raises(RouterInputError, match=r"available agents \['b'\] carry no weight"):
        router.weights(X, ["b"])


def test_fuse_is_the_weighted_sum_over_answering_agents() -> None:
    router = FixedRouter({"hospital": 1.0, "bank": 1.0, "newsroom": 2.0})
    s_h, s_n = torch.arange(5.0), torch.full((5,), 10.0)
    fused = router.fuse(X, {"hospital": s_h, "newsroom": s_n})
    assert torch.allclose(fused, (s_h + 2 * s_n).double() / 3)
    assert fused.dtype == torch.float64


def test_fused_only_weights_reproduce_fuse_agent_by_agent() -> None:
    """What the server does on ciphertexts: weights first, then one multiply-add per client."""
    router = LearnedRouter(AGENTS, feature_dim=8)
    with torch.no_grad():
        router.output_layer.weight.normal_(generator=torch.Generator().manual_seed(1))
    scores = {a: torch.randn(5, generator=torch.Generator().manual_seed(i)) for i, a in enumerate(AGENTS)}
    available = ["bank", "newsroom"]
    w = router.weights_for_fused_only(X, available)
    assert w.dtype == torch.float64 and not w.requires_grad
    assert torch.equal(w, router.weights(X, available).double())
    homomorphic = sum(w[:, i] * scores[a].double() for i, a in enumerate(available))
    assert torch.allclose(homomorphic, router.fuse(X, {a: scores[a] for a in available}))


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ({}, "no agent answered"),
        ({"spy": torch.zeros(5)}, r"unknown agents \['spy'\]"),
        ({"bank": torch.zeros(4)}, r"scores\['bank'\] must be a tensor of shape \[5\]"),
        ({"bank": [0.0] * 5}, r"scores\['bank'\] must be a tensor"),
        ({"bank": torch.tensor([0.0, 1, 2, 3, math.nan])}, "NaN or infinite"),
    ],
)
def test_fuse_refuses_bad_scores(scores: dict, message: str) -> None:
    with pytest.raises(RouterInputError, match=message):
        UniformRouter(AGENTS).fuse(X, scores)


@pytest.mark.parametrize(
    ("features", "available", "message"),
    [
        (X, [], "no agent answered"),
        (X, "bank", "not the string"),
        (X, ["bank", "bank"], "twice"),
        (X, ["bank", "spy"], r"unknown agents \['spy'\]"),
        (X[0], ["bank"], r"\[B, D\]"),
        (X.long(), ["bank"], "floating point"),
        (torch.full((2, 8), math.inf), ["bank"], "NaN or infinite"),
    ],
)
def test_weights_refuse_bad_inputs(features: torch.Tensor, available: object, message: str) -> None:
    with pytest.raises(RouterInputError, match=message):
        UniformRouter(AGENTS).weights(features, available)  # type: ignore[arg-type]


@pytest.mark.parametrize("agents", [[], ["a", "a"], ["a", ""], "ab"])
def test_agent_names_are_validated(agents: object) -> None:
    with pytest.raises(RouterConfigError, match="agents"):
        UniformRouter(agents)  # type: ignore[arg-type]


def test_registry_builds_each_kind_and_refuses_unknowns() -> None:
    routers = [make_router("uniform", AGENTS), make_router("fixed", AGENTS, weights=dict.fromkeys(AGENTS, 1.0)),
               make_router("learned", AGENTS, feature_dim=8, hidden=4)]
    for router, kind in zip(routers, ["uniform", "fixed", "learned"], strict=True):
        assert isinstance(router, Router) and router.config()["kind"] == kind
        assert torch.allclose(router.weights(X, AGENTS), torch.full((5, 3), 1 / 3))  # unfitted learned == uniform
    with pytest.raises(RouterConfigError, match="unknown router kind 'confidence'"):
        make_router("confidence", AGENTS)
    with pytest.raises(RouterConfigError, match="unexpected keyword argument 'temperature'"):
        make_router("uniform", AGENTS, temperature=2.0)
    with pytest.raises(RouterConfigError, match="missing a required argument: 'weights'"):
        make_router("fixed", AGENTS)
    with pytest.raises(RouterConfigError, match="hidden must be a positive integer"):
        make_router("learned", AGENTS, hidden=0)
    assert issubclass(RouterConfigError, RouterError)


def test_digest_identifies_the_configuration() -> None:
    a = FixedRouter({"x": 1.0, "y": 3.0})
    assert a.digest() == FixedRouter({"x": 2.0, "y": 6.0}).digest()  # same normalised shares
    assert a.digest() != FixedRouter({"x": 1.0, "y": 2.0}).digest()
    assert a.digest() != UniformRouter(["x", "y"]).digest()
    assert UniformRouter(["x", "y"]).digest() != UniformRouter(["y", "x"]).digest()
    assert a.digest().startswith("sha256:") and len(a.digest()) == 7 + 64


def test_public_api_is_exactly_what_all_exports() -> None:
    import server.router as package

    public = {n for n in vars(package) if not n.startswith("_")} - {
        "base", "capped", "errors", "features", "fixed", "learned", "membership", "mixing", "online", "registry",
        "shrunk", "training"}
    assert set(package.__all__) == public
