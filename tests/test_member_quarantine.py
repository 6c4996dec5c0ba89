"""One hostile member cannot void rounds: its vector is dropped, the rest fused, and it is quarantined.

Prepare: the coordinator world of ``test_rounds_coordinator`` (real CKKS, real SQLite store, agents as
threads answering through the store). Execute: one member answers with a ciphertext that does not
decrypt (signed with its own key, as a hostile member would) or with out-of-range scores, round
after round. Assert: the honest members' round is fused without it, every drop and the quarantine
are audited, a quarantined member is not asked until its quarantine runs out, and a round whose
fused reward is not finite is skipped instead of reaching TRL.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from test_rounds_coordinator import AGENTS, ITEMS, PROMPTS, World, expected, features

from crypto.envelope import Envelope
from server.quarantine import MEMBER_FAULTS, Quarantine, QuarantinePolicy, is_member_fault
from server.rounds import RoundCoordinator, RoundPolicy


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def _undecryptable(world: World, agent: str) -> Callable[[Envelope], Envelope]:
    """The member's own, correctly signed envelope around bytes that are no ciphertext of the context."""

    def tamper(env: Envelope) -> Envelope:
        unsigned = dataclasses.replace(env, ciphertexts=(b"\x01" * 4096,), signature=b"")
        return dataclasses.replace(unsigned, signature=world.keys[agent].sign(unsigned.signed_bytes()))

    return tamper


def _coordinator(world: World, quarantine: Quarantine | None = None) -> RoundCoordinator:
    return RoundCoordinator(state=world.state, audit=world.audit, privacy=world.fusion, router=world.router,
                            policy=RoundPolicy(quorum=2, deadline_s=20, poll_interval_s=0.02),
                            features=features, show_progress=False, quarantine=quarantine)


def test_an_undecryptable_vector_drops_only_its_member_and_the_rest_is_fused(world: World) -> None:
    world.run_agent(AGENTS[0])
    world.run_agent(AGENTS[1])
    world.run_agent(AGENTS[2], tamper=_undecryptable(world, AGENTS[2]))
    result = _coordinator(world).run_round("score", PROMPTS, ITEMS)

    assert result.status == "fused" and result.agents_used == AGENTS[:2]
    assert "does not decrypt" in result.refused[AGENTS[2]] and is_member_fault(result.refused[AGENTS[2]])
    refused = [d for _, a, d in world.audit.entries if a == "decrypt.refused"]
    assert [d["agent"] for d in refused] == [AGENTS[2]]
    assert all(r is not None for r in result.rewards or [])
    assert len(result.rewards or []) == len(ITEMS)


def test_a_member_that_keeps_failing_is_quarantined_then_let_back(world: World) -> None:
    world.run_agent(AGENTS[0])
    world.run_agent(AGENTS[1])
    world.run_agent(AGENTS[2], score=lambda _q, _r: 1e4)  # far outside the policy's [-100, 100]
    quarantine = Quarantine(world.state, world.audit, QuarantinePolicy(after_failures=2, duration_s=30.0))
    coordinator = _coordinator(world, quarantine)

    first, second = (coordinator.run_round("score", PROMPTS, ITEMS) for _ in range(2))
    assert first.agents_used == second.agents_used == AGENTS[:2]
    assert world.state.member_health()[AGENTS[2]]["quarantined_until"] is not None
    [entry] = [d for _, a, d in world.audit.entries if a == "agent.quarantined"]
    assert entry["agent"] == AGENTS[2] and entry["consecutive_failures"] == 2 and "outside" in entry["reason"]

    third = coordinator.run_round("score", PROMPTS, ITEMS)
    assert third.agents_asked == AGENTS[:2] and third.status == "fused"  # not asked while quarantined
    assert third.rewards == pytest.approx(expected(world, AGENTS[:2], PROMPTS, ITEMS), abs=1e-3)
    assert set(world.state.member_health()) == {AGENTS[2]}  # the honest members were never counted

    later = time.time() + 31  # the quarantine has run out: asked again, and the end is on the record
    assert quarantine.admitted(list(AGENTS), later) == list(AGENTS)
    assert "agent.quarantine_ended" in world.audit.actions()


def test_honest_members_are_never_counted(world: World) -> None:
    for agent in AGENTS:
        world.run_agent(agent)
    quarantine = Quarantine(world.state, world.audit, QuarantinePolicy(after_failures=1))
    for _ in range(2):
        assert _coordinator(world, quarantine).run_round("score", PROMPTS, ITEMS).agents_used == AGENTS
    assert world.state.member_health() == {} and "agent.quarantined" not in world.audit.actions()
    for reason in ("not an agent of the current router", "key holder: unreachable",
                   "stored envelope failed verification"):
        assert not is_member_fault(reason)  # the server's or the key holder's doing, not the member's
    assert len(MEMBER_FAULTS) == 5


def test_a_non_finite_fused_reward_skips_the_round_instead_of_reaching_trl(world: World) -> None:
    for agent in AGENTS:
        world.run_agent(agent)

    def overflowing(features: torch.Tensor, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.full((features.shape[0],), float("inf"), dtype=torch.float64)

    world.router.fuse = overflowing  # type: ignore[method-assign]
    result = _coordinator(world).run_round("score", PROMPTS, ITEMS)
    assert result.skipped and result.rewards is None and "not finite" in (result.reason or "")
    assert world.audit.actions()[-1] == "round.skipped"
