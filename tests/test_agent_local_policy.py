"""The agent's own refusals: what it will not score whatever the server asks (client_agent.local_policy)."""

from __future__ import annotations

import pytest

from client_agent.config import LimitsSection
from client_agent.errors import LocalPolicyRefusal
from client_agent.local_policy import check_task_allowed, task_payload_digest
from policies import builtin_policy_path, load_policy
from wire.messages import ScoringTask, TaskItem

NOW = 1_800_000_000.0
HEALTHCARE = load_policy(builtin_policy_path("healthcare"))  # fused-only, opts in to public rounds per agent
FINANCE = load_policy(builtin_policy_path("finance"))  # ckks


def _task(kind: str, round_id: str, mode: str, n: int = 4, deadline: float = NOW + 60) -> ScoringTask:
    return ScoringTask(task_id="t-1", round_id=round_id, kind=kind, privacy_mode=mode, prompts=[],
                       items=[TaskItem(prompt_index=0, response=f"a{i}") for i in range(n)], issued_at=NOW,
                       deadline=deadline)


def _code(task: ScoringTask, policy, *, session_mode: str | None = None, scored_today: int = 0,
          limits: LimitsSection | None = None) -> str | None:
    try:
        check_task_allowed(task, session_mode=session_mode or task.privacy_mode, policy=policy,
                           limits=limits or LimitsSection(), scored_today=scored_today, now=NOW)
    except LocalPolicyRefusal as exc:
        return exc.code
    return None


def _publishing(policy, *tasks: ScoringTask):  # type: ignore[no-untyped-def]
    """The policy with these tasks' contents published as the consortium's public rounds."""
    digests = [task_payload_digest(t) for t in tasks]
    return policy.model_copy(update={"privacy": policy.privacy.model_copy(update={"public_round_digests": digests})})


def test_allowed_tasks_pass() -> None:
    assert _code(_task("score", "score-abc", "fused-only"), HEALTHCARE) is None
    public = _task("router", "router-abc", "fused-only")
    assert _code(public, _publishing(HEALTHCARE, public)) is None  # healthcare opts in; this set is published
    assert _code(_task("calibrate", "calibrate-abc", "ckks"), FINANCE) is None


def test_a_round_id_that_hides_the_task_kind_is_refused() -> None:
    # the key holder opens public rounds per agent by the kind the signed round id declares: a
    # server disguising a score round as a router task must not get the agent to sign it
    assert _code(_task("router", "score-abc", "fused-only"), HEALTHCARE) == "round_kind_mismatch"
    assert _code(_task("score", "router-abc", "fused-only"), HEALTHCARE) == "round_kind_mismatch"
    assert _code(_task("score", "abc", "ckks"), FINANCE) == "round_kind_mismatch"


def test_a_public_round_whose_content_is_not_published_is_refused() -> None:
    # a dishonest server sends GRPO completions as a "router" round so the key holder would open
    # our scores one by one: the agent scores only content the consortium published as public
    published = _task("router", "router-abc", "fused-only")
    policy = _publishing(HEALTHCARE, published)
    completions = _task("router", "router-def", "fused-only", n=5)
    assert _code(completions, policy) == "not_a_public_set"
    assert _code(_task("calibrate", "calibrate-abc", "fused-only"), HEALTHCARE) == "not_a_public_set"  # none listed
    assert _code(published, policy) is None
    assert _code(_task("calibrate", "calibrate-abc", "ckks"), FINANCE) is None  # ckks: the server decrypts anyway


def test_fused_only_without_the_opt_in_refuses_public_rounds_per_agent() -> None:
    strict = HEALTHCARE.model_copy(update={"privacy": HEALTHCARE.privacy.model_copy(
        update={"public_rounds_per_agent": False})})
    assert _code(_task("router", "router-abc", "fused-only"), strict) == "per_agent_not_allowed"
    assert _code(_task("calibrate", "calibrate-abc", "fused-only"), strict) == "per_agent_not_allowed"
    assert _code(_task("score", "score-abc", "fused-only"), strict) is None


def test_mode_downgrade_size_cap_and_deadline() -> None:
    assert _code(_task("score", "score-a", "tls-only"), FINANCE, session_mode="ckks") == "privacy_mode_mismatch"
    assert _code(_task("score", "score-a", "ckks"), FINANCE, limits=LimitsSection(max_items_per_task=3)) \
        == "task_too_large"
    assert _code(_task("score", "score-a", "ckks"), FINANCE, scored_today=99_999) == "daily_cap"
    assert _code(_task("score", "score-a", "ckks", deadline=NOW), FINANCE) == "task_expired"


@pytest.mark.parametrize("mode", ["ckks", "fused-only"])
def test_policy_mode_must_match_the_task(mode: str) -> None:
    other = FINANCE if mode == "fused-only" else HEALTHCARE
    assert _code(_task("score", "score-a", mode), other) == "privacy_mode_mismatch"
