"""Quarantine: a member whose vectors keep failing is left out of rounds for a while.

Why: dropping a failing member from one round (the others are fused when quorum holds) stops
it from voiding that round, but a member that fails every round still costs every round its
wait, its decryptions and its audit entries. After ``after_failures`` consecutive rounds in
which the member answered and its own vector was refused for a reason of its own making —
non-finite or out-of-range scores, a ciphertext that does not decrypt or is not a fresh
encryption, a vector of the wrong length — it is not asked again for ``duration_s`` seconds.
Refusals that are not the member's doing (the router does not know it yet, the key holder
was unreachable, the server's own store failed a check) never count. One round in which the
member's vector is used clears its count.

Every change is audited (``agent.quarantined``, ``agent.quarantine_ended``) and kept in the
state store, so it survives a restart and the status page shows it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from server.services import AuditTrail
from server.state import StateStore

# Fragments of the refusal reasons server/fusion.py and server/agent_vectors.py give for a
# member's own faulty vector (the wording is theirs; tests/test_member_quarantine.py pins it).
MEMBER_FAULTS = ("non-finite score", "scores outside [", "ciphertext does not decrypt",
                 "ciphertext is not a fresh encryption", "scores for ")


def is_member_fault(reason: str) -> bool:
    """Was this refusal caused by the member's own vector (not by the server, router or key holder)?"""
    return any(fragment in reason for fragment in MEMBER_FAULTS)


@dataclass(frozen=True)
class QuarantinePolicy:
    """The policy's ``rounds.quarantine_after_failures`` and ``rounds.quarantine_s``."""

    after_failures: int = 3
    duration_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.after_failures < 1 or not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"quarantine: after_failures={self.after_failures} must be >= 1 and "
                             f"duration_s={self.duration_s} > 0")


class Quarantine:
    """Counts members' faulty rounds and keeps the quarantined ones out (see the module docstring)."""

    def __init__(self, state: StateStore, audit: AuditTrail, policy: QuarantinePolicy, *,
                 actor: str = "server") -> None:
        self.state, self.audit, self.policy, self.actor = state, audit, policy, actor

    def admitted(self, agents: Iterable[str], now: float) -> list[str]:
        """``agents`` minus those still quarantined; a quarantine that has run out ends here (audited)."""
        health = self.state.member_health()
        out = []
        for agent in agents:
            row = health.get(agent)
            until = row["quarantined_until"] if row else None
            if until is not None and now < until:
                continue
            if until is not None:
                self.state.set_member_health(agent, failures=row["failures"] if row else 0, quarantined_until=None,
                                             reason=None)
                self.audit.record(self.actor, "agent.quarantine_ended", {"agent": agent, "until": until})
            out.append(agent)
        return out

    def observe(self, round_id: str, answered: Sequence[str], used: Sequence[str], refused: Mapping[str, str],
                now: float) -> list[str]:
        """Update each answering member's count after a round; returns who was quarantined now."""
        health = self.state.member_health()
        newly = []
        for agent in answered:
            failures = health.get(agent, {}).get("failures", 0)
            reason = refused.get(agent)
            if agent in used:
                if failures:
                    self.state.set_member_health(agent, failures=0, quarantined_until=None, reason=None)
                continue
            if reason is None or not is_member_fault(reason):
                continue
            failures += 1
            if failures < self.policy.after_failures:
                self.state.set_member_health(agent, failures=failures, quarantined_until=None, reason=reason)
                continue
            until = now + self.policy.duration_s
            self.state.set_member_health(agent, failures=failures, quarantined_until=until, reason=reason)
            self.audit.record(self.actor, "agent.quarantined", {
                "agent": agent, "round_id": round_id, "consecutive_failures": failures, "until": until,
                "reason": reason})
            newly.append(agent)
        return newly


__all__ = ["MEMBER_FAULTS", "Quarantine", "QuarantinePolicy", "is_member_fault"]
