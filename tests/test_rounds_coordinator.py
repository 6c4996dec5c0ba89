"""Rounds against a real StateStore: quorum, deadline, stragglers, dropouts, and the GRPO reward callable.

Agents are simulated by threads that do what the HTTP service does for them: take their task
from the store (``next_task``), seal real CKKS envelopes, and store them with
``record_submission`` — unless the task already expired (the service answers 410 then).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.memory_audit import MemoryAudit
from PIL import Image
from test_fusion_modes import input_dependent_router

from corpus.types import Prompt
from crypto.ckks import CKKSKeyOwner
from crypto.envelope import Envelope, seal_scores, sign_plain_scores
from crypto.signing import SigningKey
from server.federated_reward import FederatedReward
from server.fusion import PrivacyModeError, ScoreRange
from server.privacy_mode import privacy_mode_for
from server.rounds import RoundCoordinator, RoundPolicy
from server.state import StateStore

AGENTS = ("mor://testnet/client/alice", "mor://testnet/client/bob", "mor://testnet/client/carol")
DIM = 8
CALIBRATION = {AGENTS[0]: (0.0, 1.0), AGENTS[1]: (10.0, 2.0), AGENTS[2]: (-1.0, 0.5)}
ScoreFn = Callable[[str, str], float]


def features(prompts: Any) -> torch.Tensor:
    rows = [torch.randn(DIM, generator=torch.Generator().manual_seed(int(hashlib.sha256(p.prompt_id.encode())
                                                                         .hexdigest()[:8], 16))) for p in prompts]
    return torch.stack(rows)


def agent_score(agent: str) -> ScoreFn:
    """Each agent's reward model: a different, deterministic function of the response."""
    mean, std = CALIBRATION[agent]
    k = AGENTS.index(agent)
    return lambda question, response: mean + std * ((len(response) * (k + 1)) % 7 - 3) / 3


def make_prompt(i: int) -> Prompt:
    return Prompt(f"p{i}", Image.new("RGB", (64, 64), (40 * i, 10, 10)), f"what colour is image {i}?", "general", None)


class World:
    def __init__(self, tmp: Path, mode: str = "ckks", database_url: str | None = None) -> None:
        self.state = StateStore(database_url or f"sqlite:///{tmp / 'state.db'}")
        self.audit = MemoryAudit()
        self.owner = CKKSKeyOwner.generate() if mode == "ckks" else None
        self.keys = {a: SigningKey.generate() for a in AGENTS}
        self.router = input_dependent_router(AGENTS)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        now = time.time()
        for agent in AGENTS:
            key_b64 = base64.b64encode(self.keys[agent].verify_key().raw()).decode("ascii")
            self.state.upsert_agent(agent, signing_key_b64=key_b64, architecture="test", epsilon=1.0, delta=1e-6,
                                    privacy_report={}, now=now)
            mean, std = CALIBRATION[agent]
            self.state.set_calibration(agent, {"mean": mean, "std": std, "n": 10})
        if self.owner is not None:
            self.fusion = privacy_mode_for("ckks", scores=ScoreRange(-100, 100), audit=self.audit, key_owner=self.owner)
        else:
            self.fusion = privacy_mode_for("tls-only", scores=ScoreRange(-100, 100), audit=self.audit)

    def coordinator(self, quorum: int, deadline_s: float = 1.0) -> RoundCoordinator:
        return RoundCoordinator(state=self.state, audit=self.audit, privacy=self.fusion, router=self.router,
                                policy=RoundPolicy(quorum=quorum, deadline_s=deadline_s, poll_interval_s=0.02),
                                features=features, show_progress=False)

    def run_agent(self, agent: str, delay: float = 0.0, score: ScoreFn | None = None,
                  tamper: Callable[[Envelope], Envelope] | None = None) -> None:
        """A member answering every task through the store; ``tamper`` rewrites its signed envelope first."""
        score = score or agent_score(agent)

        def loop() -> None:
            while not self.stop.is_set():
                self.state.touch_agent(agent, time.time())
                task = self.state.next_task(agent, time.time())
                if task is None:
                    time.sleep(0.01)
                    continue
                time.sleep(delay)
                row = self.state.task(task.task_id)
                if row is None or row.status == "expired" or row.deadline <= time.time():
                    continue  # the service would answer 410: too late
                prompts = task.payload["prompts"]
                values = [score(prompts[i["prompt_index"]]["question"], i["response"]) for i in task.payload["items"]]
                key, rid, tid = self.keys[agent], task.round_id, task.task_id
                env = (seal_scores(values, self.owner.public_context, signing_key=key, sender=agent, round_id=rid,
                                   task_id=tid) if self.owner
                       else sign_plain_scores(values, signing_key=key, sender=agent, round_id=rid, task_id=tid))
                env = tamper(env) if tamper else env
                self.state.record_submission(task_id=task.task_id, agent=agent, round_id=task.round_id,
                                             envelope_sha256=env.sha256(), envelope=env.to_dict(), receipt={},
                                             now=time.time())

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


PROMPTS = [make_prompt(0), make_prompt(1)]
ITEMS = [(0, "a red circle"), (0, "red"), (1, "a big blue square shape"), (1, "blue")]


def expected(world: World, agents: tuple[str, ...], prompts: list[Prompt], items: list[tuple[int, str]]
             ) -> list[float]:
    feats = features(prompts)[torch.tensor([i for i, _ in items])]
    w = world.router.weights(feats, list(agents)).double()
    z = torch.tensor([[(agent_score(a)(prompts[i].question, r) - CALIBRATION[a][0]) / CALIBRATION[a][1]
                       for i, r in items] for a in agents], dtype=torch.float64)
    return (w * z.T).sum(1).tolist()


def test_all_agents_answer_and_the_round_is_fused(world: World) -> None:
    for agent in AGENTS:
        world.run_agent(agent)
    started = time.monotonic()
    result = world.coordinator(quorum=2, deadline_s=20).run_round("score", PROMPTS, ITEMS)
    assert time.monotonic() - started < 10  # did not wait for the deadline once everyone answered
    assert result.status == "fused" and result.agents_used == AGENTS and result.agents_answered == AGENTS
    assert result.rewards == pytest.approx(expected(world, AGENTS, PROMPTS, ITEMS), abs=1e-3)
    assert world.audit.actions() == ["round.opened", "decrypt.agent", "decrypt.agent", "decrypt.agent",
                                     "round.fused"]
    opened, fused = world.audit.entries[0][2], world.audit.entries[-1][2]
    assert sorted(opened["tasks"]) == sorted(AGENTS)
    assert fused["envelope_sha256"] == result.envelope_sha256 and len(fused["envelope_sha256"]) == 3
    assert world.state.round_counts()["fused"] == 1


def test_dropout_is_renormalised_and_straggler_left_out(world: World) -> None:
    world.run_agent(AGENTS[0])
    world.run_agent(AGENTS[1], delay=2.0)  # straggler: past the 1 s deadline
    # AGENTS[2] is a dropout: enrolled and seen, never answers
    started = time.monotonic()
    result = world.coordinator(quorum=1, deadline_s=1.0).run_round("score", PROMPTS, ITEMS)
    assert 0.9 < time.monotonic() - started < 5
    assert result.status == "fused" and result.agents_used == (AGENTS[0],)
    assert result.weights == {AGENTS[0]: pytest.approx(1.0)}
    assert result.rewards == pytest.approx(expected(world, (AGENTS[0],), PROMPTS, ITEMS), abs=1e-3)
    tasks = world.audit.entries[0][2]["tasks"]
    assert world.state.task(tasks[AGENTS[1]]).status == "expired"  # type: ignore[union-attr]
    time.sleep(1.2)  # the straggler wakes up after the round closed and is refused
    assert world.state.submission(tasks[AGENTS[1]]) is None


def test_below_quorum_is_skipped_and_never_fused(world: World) -> None:
    world.run_agent(AGENTS[0])
    world.run_agent(AGENTS[1])
    result = world.coordinator(quorum=3, deadline_s=0.8).run_round("score", PROMPTS, ITEMS)
    assert result.skipped and result.rewards is None and "2 of 3 agents" in (result.reason or "")
    assert result.agents_answered == AGENTS[:2]
    assert "decrypt.agent" not in world.audit.actions()  # nothing was decrypted
    assert world.audit.actions()[-1] == "round.skipped"
    assert world.state.round_counts() == {"open": 0, "fused": 0, "collected": 0, "skipped": 1}


def test_too_few_live_agents_skips_without_issuing_tasks(world: World) -> None:
    coordinator = world.coordinator(quorum=2)
    later = time.time() + 1000  # every agent's last_seen is now outside the online window
    result = coordinator.run_round("score", PROMPTS, ITEMS, now=later)
    assert result.skipped and result.agents_asked == () and "0 live agents" in (result.reason or "")
    assert world.audit.entries[0][2]["tasks"] == {}


def test_tampered_stored_envelope_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path, mode="tls-only")
    try:
        for agent in AGENTS:
            world.run_agent(agent)
        coordinator = world.coordinator(quorum=2, deadline_s=20)
        original = world.state.submissions_for_round

        def tampering(round_id: str) -> list[dict[str, Any]]:
            rows = original(round_id)
            for row in rows:
                if row["agent"] == AGENTS[2]:
                    row["envelope"] = {**row["envelope"], "scores": [99.0] * len(ITEMS)}
            return rows

        world.state.submissions_for_round = tampering  # type: ignore[method-assign]
        result = coordinator.run_round("score", PROMPTS, ITEMS)
        assert result.status == "fused" and result.agents_used == AGENTS[:2]
        assert result.refused == {AGENTS[2]: "stored envelope failed verification"}
        assert result.rewards == pytest.approx(expected(world, AGENTS[:2], PROMPTS, ITEMS), abs=1e-9)
    finally:
        world.close()


def test_router_round_collects_per_agent_vectors(world: World) -> None:
    for agent in AGENTS:
        world.run_agent(agent)
    result = world.coordinator(quorum=3, deadline_s=20).run_round("router", PROMPTS, ITEMS)
    assert result.status == "collected" and result.vectors is not None
    for agent in AGENTS:
        raw = [agent_score(agent)(PROMPTS[i].question, r) for i, r in ITEMS]
        assert result.vectors[agent] == pytest.approx(raw, abs=1e-3)


def test_fused_only_refuses_rounds_that_need_per_agent_scores(world: World) -> None:
    assert world.owner is not None
    fusion = privacy_mode_for("fused-only", scores=ScoreRange(-1, 1), audit=world.audit,
                              context=world.owner.public_context,
                               keyholder=object())  # type: ignore[arg-type]
    coordinator = RoundCoordinator(state=world.state, audit=world.audit, privacy=fusion, router=world.router,
                                   policy=RoundPolicy(quorum=1, deadline_s=1), features=features)
    with pytest.raises(PrivacyModeError):
        coordinator.run_round("router", PROMPTS, ITEMS)
    assert world.audit.entries == []  # refused before any task was issued


def test_federated_reward_returns_one_float_per_completion_in_trl_order(world: World, tmp_path: Path) -> None:
    for agent in AGENTS:
        world.run_agent(agent)
    reward = FederatedReward(world.coordinator(quorum=2, deadline_s=20), PROMPTS, step_log=tmp_path / "steps.jsonl")
    order = [(1, "blue"), (0, "a red circle"), (1, "a big blue square shape"), (0, "red")]  # interleaved on purpose
    completions = [[{"role": "assistant", "content": text}] for _, text in order]
    metrics: dict[str, float] = {}
    got = reward([[{"role": "user", "content": "q"}]] * 4, completions, None,
                 prompt_id=[f"p{i}" for i, _ in order], image=[None] * 4,
                 log_metric=metrics.__setitem__, trainer_state=None)
    # the round's prompts are in order of first appearance: p1, p0
    assert got == pytest.approx(expected(world, AGENTS, [PROMPTS[1], PROMPTS[0]],
                                         [(1 - i, t) for i, t in order]), abs=1e-3)
    assert metrics["agents_answered"] == 3 and metrics["round_skipped"] == 0
    assert sum(v for k, v in metrics.items() if k.startswith("router_weight/")) == pytest.approx(1.0)
    line = json.loads((tmp_path / "steps.jsonl").read_text().splitlines()[0])
    assert line["status"] == "fused" and line["n_scored"] == 4 and len(line["router_weights"]) == 3


def test_federated_reward_below_quorum_returns_none(world: World, tmp_path: Path) -> None:
    world.run_agent(AGENTS[0])
    reward = FederatedReward(world.coordinator(quorum=2, deadline_s=0.5), PROMPTS, step_log=tmp_path / "s.jsonl")
    got = reward([], [[{"role": "assistant", "content": "x"}]] * 2, None, prompt_id=["p0", "p1"])
    assert got == [None, None]
    assert json.loads((tmp_path / "s.jsonl").read_text())["status"] == "skipped"


def test_a_member_enrolled_after_the_router_joins_a_uniform_one_and_is_not_asked_by_another(world: World) -> None:
    """Found by tests/test_multi_host_netns.py: a late member was asked every round and its scores refused."""
    from server.router import make_router

    for agent in AGENTS:
        world.run_agent(agent)
    world.router = make_router("uniform", AGENTS[:2])  # built before AGENTS[2] enrolled
    coordinator = world.coordinator(quorum=2, deadline_s=20)
    result = coordinator.run_round("score", PROMPTS, ITEMS)
    assert result.status == "fused" and result.agents_used == AGENTS and not result.refused
    assert coordinator.router.agents == AGENTS
    assert [d for _, a, d in world.audit.entries if a == "router.updated"] == [
        {"kind": "uniform", "added": [AGENTS[2]], "digest": coordinator.router.digest()}]

    world.router = input_dependent_router(AGENTS[:2])  # a fitted router has no weight for her: she is not asked
    result = world.coordinator(quorum=2, deadline_s=20).run_round("score", PROMPTS, ITEMS)
    assert result.status == "fused" and result.agents_asked == AGENTS[:2] and result.agents_used == AGENTS[:2]
    opened = [d for _, a, d in world.audit.entries if a == "round.opened"][-1]
    assert sorted(opened["tasks"]) == sorted(AGENTS[:2]) and opened["not_weighed"] == [AGENTS[2]]
