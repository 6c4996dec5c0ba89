"""What a member's agent refuses to score, whatever the server asks.

The server is not trusted to respect the member's limits, so the agent checks each task
against its own copy of the consortium policy and its local limits before scoring it; a
refusal is recorded in the agent's ledger and audit log with one of these codes:
``privacy_mode_mismatch``, ``round_kind_mismatch``, ``per_agent_not_allowed``,
``not_a_public_set``, ``task_too_large``, ``daily_cap``, ``task_expired``.
"""

from __future__ import annotations

from typing import Any

from client_agent.errors import LocalPolicyRefusal
from wire.messages import ScoringTask, payload_digest


def task_payload_digest(task: ScoringTask) -> str:
    """What this task asks us to score, named by digest (signed into the envelope; see ``payload_digest``)."""
    return payload_digest(task.kind, task.prompts, task.items)


def check_task_allowed(task: ScoringTask, *, session_mode: str, policy: Any, limits: Any, scored_today: int,
                       now: float) -> None:
    """Raise :class:`LocalPolicyRefusal` if the member's own policy forbids scoring ``task``.

    Why here and not on the server: the agent enforces these whatever the server asks — a server
    must not downgrade the privacy mode, oversize a task, exceed the daily cap, or have the agent
    sign a round id whose declared kind is false (the key holder trusts that kind).
    """
    n = len(task.items)
    if task.privacy_mode != session_mode or task.privacy_mode != policy.privacy.mode:
        raise LocalPolicyRefusal("privacy_mode_mismatch", f"task asks for privacy mode {task.privacy_mode!r}; "
                                 f"the consortium policy says {policy.privacy.mode!r}")
    if not task.round_id.startswith(f"{task.kind}-"):
        raise LocalPolicyRefusal("round_kind_mismatch", f"a {task.kind!r} task in round {task.round_id!r}, "
                                 f"whose id does not declare that kind")
    if task.privacy_mode == "fused-only" and task.kind != "score" and not policy.privacy.public_rounds_per_agent:
        raise LocalPolicyRefusal("per_agent_not_allowed", f"a {task.kind!r} round would open our scores one by "
                                 "one; the consortium policy does not set privacy.public_rounds_per_agent")
    if task.privacy_mode == "fused-only" and task.kind != "score" and \
            task_payload_digest(task) not in policy.privacy.public_round_digests:
        raise LocalPolicyRefusal("not_a_public_set", f"a {task.kind!r} round whose content is not one of the public "
                                 "rounds the consortium policy publishes (privacy.public_round_digests): its "
                                 "per-agent scores could be opened, so it is not scored")
    if n > limits.max_items_per_task or n > policy.scores.max_vector_length:
        raise LocalPolicyRefusal("task_too_large", f"{n} items; the local limit is {limits.max_items_per_task} "
                                 f"(policy max_vector_length {policy.scores.max_vector_length})")
    if scored_today + n > limits.max_items_per_day:
        raise LocalPolicyRefusal("daily_cap", f"{n} items would exceed the daily cap of "
                                 f"{limits.max_items_per_day} ({scored_today} scored today)")
    if task.deadline <= now:
        raise LocalPolicyRefusal("task_expired", f"deadline {task.deadline} has passed")
