"""Trainer rounds in flight are bounded: a runaway trainer cannot queue rounds without end.

Before the bound every ``POST /v1/trainer/rounds`` with a new key queued one more round in the
service's worker pool — its completions held in memory, then put to every member to score. A
real coordinator, SQLite store and audit log (:class:`sim.bench.thread_agents.ThreadAgents`,
members not started, so every round stays open); the bound is shortened to 3 for speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.prompts import build_prompts
from server import trainer_rounds
from server.rejections import Rejection
from server.round_transport import RoundKey
from server.router import make_router
from server.trainer_rounds import TrainerRounds
from sim.bench.grpo_step import AGENTS, features
from sim.bench.scorers import SCORERS
from sim.bench.thread_agents import ThreadAgents
from wire.messages import TaskItem
from wire.trainer import TrainerRoundRequest

PROMPTS = build_prompts(2, seed=0)


def _request(step: int) -> TrainerRoundRequest:
    return TrainerRoundRequest(run_id="r1", step=step, rank=0, prompt_ids=[PROMPTS[0].prompt_id],
                               items=[TaskItem(prompt_index=0, response=f"completion {step}")])


def test_past_the_bound_a_new_round_is_refused_429_until_one_finishes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_rounds, "MAX_IN_FLIGHT", 3)
    agents = ThreadAgents(tmp_path, AGENTS, SCORERS)
    rounds = TrainerRounds(audit=agents.audit, deadline_s=1.0)
    rounds.set_ready(agents.coordinator(make_router("uniform", AGENTS), features, quorum=3, deadline_s=1.0,
                                        poll_interval_s=0.02), PROMPTS)
    try:
        assert [rounds.open("t", _request(step)).status for step in range(3)] == ["open"] * 3
        with pytest.raises(Rejection) as refused:
            rounds.open("t", _request(3))
        assert (refused.value.status, refused.value.code) == (429, "too_many_rounds")
        assert rounds.open("t", _request(0)).replayed  # a replay of a known key costs nothing: still answered
        assert rounds.result(RoundKey("r1", 0, 0), wait_s=10).status == "skipped"  # deadline, nobody answered
        for step in (1, 2):
            rounds.result(RoundKey("r1", step, 0), wait_s=10)
        assert rounds.open("t", _request(3)).status == "open"  # room again
    finally:
        rounds.close()
        agents.close()


def test_a_prompt_listed_twice_or_used_by_no_item_is_refused(tmp_path: Path) -> None:
    """Each listed prompt's image goes to every member: repeats and unused ids only multiplied the task."""
    agents = ThreadAgents(tmp_path, AGENTS, SCORERS)
    rounds = TrainerRounds(audit=agents.audit, deadline_s=1.0)
    rounds.set_ready(agents.coordinator(make_router("uniform", AGENTS), features, quorum=3, deadline_s=1.0), PROMPTS)
    item = TaskItem(prompt_index=0, response="a red circle")
    try:
        for prompt_ids, code in (([PROMPTS[0].prompt_id] * 2, "duplicate_prompt"),
                                 ([PROMPTS[0].prompt_id, PROMPTS[1].prompt_id], "unused_prompt")):
            with pytest.raises(Rejection) as refused:
                rounds.open("t", TrainerRoundRequest(run_id="r1", step=0, rank=0, prompt_ids=prompt_ids, items=[item]))
            assert (refused.value.status, refused.value.code) == (422, code)
        assert agents.state.round_counts().get("open", 0) == 0  # no round went out to the members
    finally:
        rounds.close()
        agents.close()
