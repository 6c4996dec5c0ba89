"""The learned router on synthetic data where the right agent per domain is known by construction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from server.router import (
    LearnedRouter,
    RouterConfigError,
    RouterFitConfig,
    RouterFitReport,
    RouterInputError,
    RouterStateError,
    RouterTrainingSet,
)

AGENTS = ("alpha", "beta", "gamma")
DOMAINS = ("d0", "d1", "d2")
DIM = 16
QUIET = RouterFitConfig(show_progress=False)


def synthetic_set(n: int = 900, seed: int = 0, drop: float = 0.1) -> RouterTrainingSet:
    """Agent k scores domain k's pairs accurately and every other domain with pure noise.

    Features carry the domain (a shifted coordinate plus noise); about ``drop`` of the scores
    are missing (masked, set to NaN) but every pair keeps at least one agent.
    """
    g = torch.Generator().manual_seed(seed)
    domain = torch.arange(n) % 3
    features = 0.5 * torch.randn(n, DIM, generator=g)
    features[torch.arange(n), domain] += 3.0
    u_chosen = torch.randn(n, generator=g)
    u_rejected = u_chosen - (0.2 + torch.rand(n, generator=g))  # the chosen answer is truly better
    chosen, rejected = 1.5 * torch.randn(n, 3, generator=g), 1.5 * torch.randn(n, 3, generator=g)
    own = torch.nn.functional.one_hot(domain, 3).bool()
    chosen[own] = u_chosen + 0.2 * torch.randn(n, generator=g)
    rejected[own] = u_rejected + 0.2 * torch.randn(n, generator=g)
    mask = torch.rand(n, 3, generator=g) >= drop
    mask[torch.arange(n), torch.randint(0, 3, (n,), generator=g)] = True
    chosen[~mask], rejected[~mask] = math.nan, math.nan
    return RouterTrainingSet(AGENTS, features, chosen, rejected, mask,
                             domains=tuple(DOMAINS[int(d)] for d in domain),
                             groups=tuple(f"prompt-{i // 2}" for i in range(n)))


@pytest.fixture(scope="module")
def data() -> RouterTrainingSet:
    return synthetic_set()


@pytest.fixture(scope="module")
def fitted(data: RouterTrainingSet) -> tuple[LearnedRouter, RouterFitReport]:
    router = LearnedRouter(AGENTS, feature_dim=DIM, hidden=32, seed=0)
    return router, router.fit(data, QUIET)


def test_learned_router_routes_each_domain_to_its_expert(fitted: tuple[LearnedRouter, RouterFitReport]) -> None:
    router, report = fitted
    assert report.mean_weights_by_domain is not None
    for k, domain in enumerate(DOMAINS):
        assert report.mean_weights_by_domain[domain][AGENTS[k]] > 0.6, report.mean_weights_by_domain
    singles = [acc for acc in report.val_accuracy_by_agent.values() if acc is not None]
    assert len(singles) == 3
    assert report.val_accuracy > report.val_accuracy_uniform + 0.1
    assert report.val_accuracy > max(singles) + 0.1
    assert report.n_train + report.n_val == 900 and report.n_val % 2 == 0  # split by prompt (2 pairs each)
    assert 1 <= report.best_epoch <= report.epochs_run
    assert report.val_bt_loss < math.log(2)  # better than a coin
    fresh = synthetic_set(n=300, seed=1)  # unseen prompts: each goes to its domain's expert
    w = router.weights(fresh.features, AGENTS)
    domain = torch.arange(300) % 3
    assert (w.argmax(1) == domain).float().mean() > 0.9


def test_missing_agent_renormalises_learned_weights(fitted: tuple[LearnedRouter, RouterFitReport],
                                                    data: RouterTrainingSet) -> None:
    router, _ = fitted
    full = router.weights(data.features[:30], AGENTS)
    part = router.weights(data.features[:30], ["gamma", "alpha"])
    assert torch.allclose(part.sum(1), torch.ones(30), atol=1e-6)
    assert torch.allclose(part[:, 0] / part[:, 1], full[:, 2] / full[:, 0], rtol=1e-4)


def test_entropy_term_keeps_weights_spread(data: RouterTrainingSet) -> None:
    def entropy_with(coef: float) -> float:
        router = LearnedRouter(AGENTS, feature_dim=DIM, hidden=32, seed=0)
        config = RouterFitConfig(entropy_coef=coef, show_progress=False, max_epochs=60)
        return router.fit(data, config).val_mean_entropy

    low, high = entropy_with(0.0), entropy_with(0.5)
    assert high > low + 0.3
    assert high <= math.log(3) + 1e-6


def test_fit_is_deterministic_given_seeds(data: RouterTrainingSet,
                                          fitted: tuple[LearnedRouter, RouterFitReport]) -> None:
    router, report = fitted
    again = LearnedRouter(AGENTS, feature_dim=DIM, hidden=32, seed=0)
    assert again.fit(data, QUIET) == report
    assert again.digest() == router.digest()
    other = LearnedRouter(AGENTS, feature_dim=DIM, hidden=32, seed=1)
    other.fit(data, QUIET)
    assert other.digest() != router.digest()


def test_save_load_round_trip_and_refusals(fitted: tuple[LearnedRouter, RouterFitReport], tmp_path: Path) -> None:
    router, _ = fitted
    path = tmp_path / "router.safetensors"
    digest = router.save(path)
    loaded = LearnedRouter.load(path, expected_digest=digest)
    assert loaded.digest() == digest and loaded.config() == router.config()
    x = torch.randn(7, DIM, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.weights(x, ["beta", "alpha"]), router.weights(x, ["beta", "alpha"]))

    with pytest.raises(RouterStateError, match="already exists"):
        router.save(path)
    with pytest.raises(RouterStateError, match="differs from the expected"):
        LearnedRouter.load(path, expected_digest=LearnedRouter(AGENTS, feature_dim=DIM, hidden=32).digest())
    with pytest.raises(RouterStateError, match="no such router file"):
        LearnedRouter.load(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(RouterStateError, match="garbage.safetensors: not a readable safetensors file"):
        LearnedRouter.load(garbage)
    flipped = bytearray(path.read_bytes())
    flipped[-1] ^= 0xFF  # one bit of one weight: loads, but is not the audited router
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(flipped))
    with pytest.raises(RouterStateError, match="differs from the expected"):
        LearnedRouter.load(tampered, expected_digest=digest)


def test_features_of_the_wrong_width_are_refused(fitted: tuple[LearnedRouter, RouterFitReport]) -> None:
    router, _ = fitted
    with pytest.raises(RouterInputError, match="dimension 5, this router expects 16"):
        router.weights(torch.zeros(2, 5), AGENTS)


def test_training_set_and_fit_config_are_validated(data: RouterTrainingSet) -> None:
    with pytest.raises(RouterInputError, match=r"chosen must be \[900, 3\]"):
        RouterTrainingSet(AGENTS, data.features, data.chosen[:, :2], data.rejected, data.mask)
    bad_mask = data.mask.clone()
    bad_mask[4] = False
    with pytest.raises(RouterInputError, match="pair 4 has no agent score"):
        RouterTrainingSet(AGENTS, data.features, data.chosen, data.rejected, bad_mask)
    with pytest.raises(RouterInputError, match="NaN/infinite scores where mask is True"):
        RouterTrainingSet(AGENTS, data.features, data.chosen, data.rejected, torch.ones(900, 3, dtype=torch.bool))
    with pytest.raises(RouterInputError, match="differ from router agents"):
        LearnedRouter(("gamma", "beta", "alpha"), feature_dim=DIM).fit(data, QUIET)
    for field, value in [("val_fraction", 1.0), ("entropy_coef", -1.0), ("max_epochs", 0), ("learning_rate", 0.0)]:
        with pytest.raises(RouterConfigError, match=f"RouterFitConfig.{field}"):
            RouterFitConfig(**{field: value})
