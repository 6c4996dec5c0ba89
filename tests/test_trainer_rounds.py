"""The service's side of scale (issue 16 §3): trainer rounds keyed ``(run, step, rank)``.

Real parts throughout: a SQLite state store, the signed audit log, three member threads that seal
CKKS envelopes and the coordinator that verifies, decrypts and fuses them
(:class:`sim.bench.thread_agents.ThreadAgents`). What is shown:

* ranks never wait on each other: two ranks' rounds are open at once and each fuses;
* a step asked again with the same completions is answered from its round (members are not
  asked twice); with other completions it is a new round, audited as replaced;
* a rank that dies mid-step leaves nothing open: its round closes at the deadline whatever
  happens, and the service audits it as unclaimed;
* bad requests get a precise 4xx, never a 5xx;
* ``mor server serve --training`` runs the stages itself and then opens the run to the ranks (or
  tells them why it could not).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.pki import make_pki

from corpus.prompts import build_prompts
from crypto.signing import SigningKey
from server.admission import AdmissionControl, RateLimiter, RevocationList
from server.rejections import Rejection
from server.round_transport import RoundKey
from server.router import make_router
from server.services import ServicePolicy, Services
from server.trainer import TrainingSection
from server.trainer_rounds import TrainerRounds, _stoppable, prepare_in_background, prompt_set_sha256
from server.training_data import load_prompts
from sim.bench.grpo_step import AGENTS, features
from sim.bench.scorers import SCORERS
from sim.bench.thread_agents import ThreadAgents
from wire.messages import TaskItem
from wire.trainer import TrainerRoundRequest

TRAINER = "mor://bench/trainer/t1"
PROMPTS = build_prompts(3, seed=0)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[ThreadAgents]:
    agents = ThreadAgents(tmp_path, AGENTS, SCORERS)
    try:
        yield agents
    finally:
        agents.close()


def _rounds(world: ThreadAgents, deadline_s: float) -> TrainerRounds:
    rounds = TrainerRounds(audit=world.audit, deadline_s=deadline_s)
    coordinator = world.coordinator(make_router("uniform", AGENTS), features, quorum=3, deadline_s=deadline_s,
                                    poll_interval_s=0.02)
    rounds.set_ready(coordinator, PROMPTS)
    return rounds


def _request(step: int, rank: int, answers: tuple[str, ...] = ("a red circle", "blue")) -> TrainerRoundRequest:
    prompt = PROMPTS[rank % len(PROMPTS)].prompt_id
    return TrainerRoundRequest(run_id="r1", step=step, rank=rank, prompt_ids=[prompt],
                               items=[TaskItem(prompt_index=0, response=a) for a in answers])


def _audit(world: ThreadAgents, action: str) -> list[dict[str, object]]:
    lines = (Path(world.audit.log.directory) / "entries.jsonl").read_text("utf-8").splitlines()
    return [e["entry"]["details"] for e in map(json.loads, lines) if e["entry"]["action"] == action]


def _open_rounds(world: ThreadAgents) -> int:
    return world.state.round_counts().get("open", 0)


def test_ranks_rounds_run_side_by_side_and_a_replayed_step_is_not_scored_again(world: ThreadAgents) -> None:
    rounds = _rounds(world, deadline_s=30)
    first = [rounds.open(TRAINER, _request(step=0, rank=r)) for r in (0, 1)]
    assert [s.status for s in first] == ["open", "open"]  # neither call waited for members
    time.sleep(0.2)
    assert _open_rounds(world) == 2  # both ranks' rounds are out at the same time
    world.start()
    done = [rounds.result(RoundKey("r1", 0, r), wait_s=20) for r in (0, 1)]
    assert [d.status for d in done] == ["fused", "fused"] and done[0].round_id != done[1].round_id
    assert all(len(d.rewards or []) == 2 and None not in (d.rewards or []) for d in done)
    counts = world.state.round_counts()

    again = rounds.open(TRAINER, _request(step=0, rank=0))  # a restarted rank replays step 0, same completions
    assert again.replayed and again.round_id == done[0].round_id and again.rewards == done[0].rewards
    assert world.state.round_counts() == counts  # no new round: members were not asked again
    assert len(_audit(world, "trainer.round.replayed")) == 1

    other = rounds.open(TRAINER, _request(step=0, rank=0, answers=("green", "a square")))  # sampled anew
    replaced = rounds.result(RoundKey("r1", 0, 0), wait_s=20)
    assert not other.replayed and replaced.status == "fused" and replaced.round_id != done[0].round_id
    assert len(_audit(world, "trainer.round.replaced")) == 1
    assert len(_audit(world, "trainer.round.requested")) == 3
    rounds.close()


def test_a_rank_that_dies_mid_step_leaves_no_round_open_and_is_audited(world: ThreadAgents) -> None:
    rounds = _rounds(world, deadline_s=0.4)  # no member answers: the round can only expire
    assert rounds.open(TRAINER, _request(step=3, rank=1)).status == "open"  # ... and the rank dies here
    time.sleep(1.2)  # its deadline, and one more deadline unclaimed
    assert _open_rounds(world) == 0
    [skipped] = _audit(world, "round.skipped")
    assert "0 of 3 agents answered" in str(skipped["reason"])
    rounds.open(TRAINER, _request(step=0, rank=0))  # the service notices on its next round
    [unclaimed] = _audit(world, "trainer.round.unclaimed")
    assert (unclaimed["step"], unclaimed["rank"], unclaimed["status"]) == (3, 1, "skipped")
    rounds.close()


def test_refusals_are_precise(world: ThreadAgents) -> None:
    rounds = TrainerRounds(audit=world.audit, deadline_s=1)
    with pytest.raises(Rejection) as not_ready:
        rounds.open(TRAINER, _request(step=0, rank=0))
    assert (not_ready.value.status, not_ready.value.code) == (409, "not_ready")
    rounds = _rounds(world, deadline_s=1)
    unknown = TrainerRoundRequest(run_id="r1", step=0, rank=0, prompt_ids=["nope"],
                                  items=[TaskItem(prompt_index=0, response="x")])
    with pytest.raises(Rejection) as bad_prompt:
        rounds.open(TRAINER, unknown)
    assert (bad_prompt.value.status, bad_prompt.value.code) == (422, "unknown_prompt")
    out_of_range = _request(step=0, rank=0).model_copy(update={"items": [TaskItem(prompt_index=1, response="x")]})
    with pytest.raises(Rejection) as bad_index:
        rounds.open(TRAINER, out_of_range)
    assert bad_index.value.status == 422
    small = TrainerRounds(audit=world.audit, deadline_s=1, max_items=1)
    assert rounds.coordinator is not None
    small.set_ready(rounds.coordinator, PROMPTS)
    with pytest.raises(Rejection) as too_many:
        small.open(TRAINER, _request(step=0, rank=0))
    assert (too_many.value.status, too_many.value.code) == (422, "too_many_items")
    small.close()
    with pytest.raises(Rejection) as never:
        rounds.result(RoundKey("r1", 9, 0), wait_s=0)
    assert (never.value.status, never.value.code) == (404, "unknown_round")
    rounds.close()


def _services(world: ThreadAgents, tmp_path: Path) -> Services:
    pki = make_pki(tmp_path / "pki")
    policy = ServicePolicy(consortium="bench", digest="d" * 64, privacy_mode="ckks", max_epsilon=8.0,
                           max_delta=1e-5, max_body_bytes=2_000_000, max_items=4096, requests_per_s=100, burst=100,
                           score_min=-100, score_max=100, out_of_range="refuse", allowed_identities=None)
    return Services(policy=policy, state=world.state, audit=world.audit, signing_key=SigningKey.generate(),
                    admission=AdmissionControl(consortium="bench", revocations=RevocationList(pki.crl, pki.ca_cert),
                                               rate_limiter=RateLimiter(100, 100)), privacy=world.privacy)


def _stages(tmp_path: Path, quorum: int) -> TrainingSection:
    return TrainingSection(model_path=tmp_path / "unused", output_dir=tmp_path / "out", quorum=quorum,
                           deadline_s=20, enrol_timeout_s=0.5, router="uniform", n_calibration=4, n_prompts=3)


def test_the_service_prepares_the_run_then_opens_it_to_the_ranks(world: ThreadAgents, tmp_path: Path) -> None:
    world.start()
    rounds = TrainerRounds(audit=world.audit, deadline_s=20)
    config = _stages(tmp_path, quorum=3)
    prepare_in_background(_services(world, tmp_path), config, rounds, stop=lambda: None).join(60)
    run = rounds.run()
    assert run.ready and run.stage == "ready" and run.error is None and run.n_prompts == 3
    prompts, _ = load_prompts(config.data, n=config.n_prompts, seed=config.seed)
    assert run.prompts_sha256 == prompt_set_sha256(prompts)  # what every rank checks before its first round
    assert world.state.round_counts()["collected"] == 1  # the service's calibration round
    assert len(_audit(world, "trainer.rounds.ready")) == 1
    rounds.close()


def test_a_stage_that_fails_is_audited_and_told_to_the_ranks(world: ThreadAgents, tmp_path: Path) -> None:
    rounds = TrainerRounds(audit=world.audit, deadline_s=20)
    prepare_in_background(_services(world, tmp_path), _stages(tmp_path, quorum=4), rounds, stop=lambda: None).join(30)
    run = rounds.run()
    assert not run.ready and run.stage == "failed" and "quorum is 4" in str(run.error)
    [failed] = _audit(world, "training.failed")
    assert "quorum is 4" in str(failed["error"])
    rounds.close()


def test_a_stopping_service_ends_rounds_in_flight_at_once(world: ThreadAgents) -> None:
    rounds = _rounds(world, deadline_s=60)  # no member answers: without the stop it would wait a minute
    stopping: list[str] = []
    assert rounds.coordinator is not None
    rounds.coordinator.sleep = _stoppable(lambda: stopping[0] if stopping else None)
    rounds.open(TRAINER, _request(step=0, rank=0))
    time.sleep(0.3)
    started = time.monotonic()
    stopping.append("signal SIGTERM")
    state = rounds.result(RoundKey("r1", 0, 0), wait_s=10)
    assert time.monotonic() - started < 5
    assert state.status == "skipped" and "ShutdownRequested" in str(state.reason)
    assert _open_rounds(world) == 1  # left for the runner to close as round.abandoned
    rounds.close()
