"""The stage breakdown of a federated round (bench section 1): exact, ordered, and attributed as documented."""

from __future__ import annotations

import pytest
import torch

from server.router import LearnedRouter, UniformRouter
from sim.bench.stages import STAGES, StageClock, TimedRouter, breakdown

AGENTS = ("mor://b/client/a", "mor://b/client/b")


def _stamps(received: float, scored: float, sealed: float, receipted: float) -> dict[str, float]:
    return {"received": received, "scored": scored, "sealed": sealed, "receipted": receipted}


def test_critical_path_is_the_last_agent_to_seal_and_stages_sum_to_the_round() -> None:
    clock = StageClock(router_s=0.25, features_s=0.5, fuse_start=9.0)
    # the slow agent's receipt arrives after fusion began: the group commit woke the coordinator first
    agents = {"fast": _stamps(0.5, 1.0, 1.1, 1.2), "slow": _stamps(1.0, 6.0, 6.5, 9.2)}
    stages = breakdown(0.0, 10.0, agents, clock)
    assert (stages["score"], stages["seal"]) == (5.0, 0.5)  # the slow agent's, not the fast one's
    assert stages["route"] == 0.75 and stages["open/fuse"] == pytest.approx(0.75)
    assert sum(stages[s] for s in STAGES) == pytest.approx(stages["round"]) == 10.0
    assert stages["transfer"] == pytest.approx(10.0 - 5.0 - 0.5 - 0.75 - 0.75)


@pytest.mark.parametrize("bad", [
    {"x": _stamps(2.0, 1.0, 3.0, 4.0)},  # scored before received
    {"x": _stamps(1.0, 2.0, 9.5, 9.7)},  # sealed after fusion began
    {"x": _stamps(1.0, 2.0, 3.0, 2.5)},  # receipted before it was sealed
])
def test_stamps_out_of_order_are_refused(bad: dict[str, dict[str, float]]) -> None:
    with pytest.raises(ValueError, match="out of order"):
        breakdown(0.0, 10.0, bad, StageClock(fuse_start=9.0))


def test_unfused_round_is_refused() -> None:
    with pytest.raises(ValueError, match="not fused"):
        breakdown(0.0, 1.0, {"x": _stamps(0.1, 0.2, 0.3, 0.4)}, StageClock())


@pytest.mark.parametrize("inner", [LearnedRouter(AGENTS, feature_dim=4, hidden=3, seed=1), UniformRouter(AGENTS)])
def test_timed_router_is_the_inner_router_plus_a_clock(inner: LearnedRouter | UniformRouter) -> None:
    clock = StageClock()
    timed = TimedRouter(inner, clock)
    features = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    scores = {a: torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
              for i, a in enumerate(AGENTS)}
    assert torch.equal(timed.fuse(features, scores), inner.fuse(features, scores))
    assert torch.equal(timed.weights_for_fused_only(features, AGENTS), inner.weights_for_fused_only(features, AGENTS))
    assert timed.digest() == inner.digest()  # what the audit log records is the real router's
    assert clock.router_s > 0
