"""A member's lifetime privacy budget: how its DP trainings compose, and the policy's cap on them.

Why it exists: a member that retrains its reward model on the same private pairs releases a
second DP-SGD run about the same people; the ε of each run alone understates what all of them
together reveal. ``privacy.lifetime_epsilon`` caps the composition.

How runs compose (stated once, used by the agent before it trains and by the server when it
enrols): every run is a Poisson-subsampled Gaussian mechanism repeated ``steps`` times with its
own noise multiplier σ and sampling rate q. The lifetime ε is what the **Opacus accountant named
by the policy** (``privacy.accountant``: PRV by default; RDP or GDP if chosen) reports for the
concatenation of all runs' ``(σ, q, steps)`` — adaptive composition of the whole history —
at δ = the policy's ``max_delta``. Composing the mechanisms rather than adding ε's is sound
(composition of DP mechanisms is what the accountant computes) and tighter than Σε.

It lives in ``policies`` because the agent and the server must enforce the same rule from the
same policy, and neither may import the other.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

COMPOSITION = "Opacus {accountant} accountant over every run's (noise_multiplier, sample_rate, steps), delta={delta:g}"


class LedgerRun(BaseModel):
    """One DP training a member ran, as its signed privacy report states it."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    report_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: str
    epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    noise_multiplier: float = Field(gt=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=0)


def compose_epsilon(runs: Sequence[LedgerRun] | Sequence[tuple[float, float, int]], *, delta: float,
                    accountant: str) -> tuple[float, str]:
    """(lifetime ε of ``runs`` at ``delta``, the accountant that computed it); see the module doc.

    ``runs`` are LedgerRuns or ``(σ, q, steps)`` triples. Runs with the same (σ, q) are merged. GDP
    only accounts for one constant (σ, q), so a history with several falls back to RDP, which
    is a valid (looser) upper bound for any history.
    """
    from opacus.accountants import create_accountant

    merged: dict[tuple[float, float], int] = {}
    for run in runs:
        s, q, n = (run.noise_multiplier, run.sample_rate, run.steps) if isinstance(run, LedgerRun) else run
        if int(n) > 0:
            merged[(float(s), float(q))] = merged.get((float(s), float(q)), 0) + int(n)
    if not merged:
        return 0.0, accountant
    used = "rdp" if accountant == "gdp" and len(merged) > 1 else accountant
    acc = create_accountant(mechanism=used)
    acc.history = [(s, q, n) for (s, q), n in merged.items()]
    return float(acc.get_epsilon(delta=delta)), used


def composition_statement(*, accountant: str, delta: float) -> str:
    """How the lifetime ε was composed, in words, for reports and status pages."""
    return COMPOSITION.format(accountant=accountant.upper(), delta=delta)
