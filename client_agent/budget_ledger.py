"""The member's lifetime privacy ledger: every DP training it ran, kept in its own signed audit log.

Why the audit log and not a separate file: its entries are Ed25519-signed and chained into a
Merkle tree with signed checkpoints, and :meth:`audit.AuditLog.open` refuses a log that fails
verification — so a training cannot be quietly dropped from the ledger by editing one file. The
server keeps its own copy from the signed privacy reports it receives (each report lists the
runs before it), so wiping the agent's state does not reset the budget either.

One ``privacy.spent`` entry per training, written right after the signed report. Before a
training starts, :meth:`LifetimeLedger.approve` composes the past runs with the planned one
(:func:`policies.lifetime.compose_epsilon`) and refuses if that passes the policy's
``privacy.lifetime_epsilon``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from audit import AuditLog
from audit.storage import ENTRIES, read_lines
from audit.verify import verify_log
from client_agent.errors import LifetimeBudgetExceededError, PrivacyReportError
from client_agent.privacy_report import SignedPrivacyReport
from crypto.signing import VerifyKey
from policies.lifetime import LedgerRun, compose_epsilon, composition_statement

SPENT = "privacy.spent"


def report_sha256(signed: SignedPrivacyReport) -> str:
    """The digest that names one training everywhere (agent ledger, wire report, server ledger)."""
    return hashlib.sha256(signed.to_json().encode()).hexdigest()


@dataclass(frozen=True)
class LifetimeLedger:
    """The runs so far and the policy's rule for them."""

    identity: str
    runs: tuple[LedgerRun, ...]
    limit: float | None
    delta: float
    accountant: str

    @classmethod
    def from_audit(cls, audit: AuditLog, *, identity: str, policy: Any) -> LifetimeLedger:
        """Read the ``privacy.spent`` entries of ``identity`` from an open (hence verified) log."""
        return cls._read(audit.directory, identity=identity, policy=policy)

    @classmethod
    def read_verified(cls, directory: Path, key: VerifyKey, *, identity: str, policy: Any) -> LifetimeLedger:
        """Verify the log read-only (no writer lock: a running agent may hold it), then read it."""
        if not (directory / ENTRIES).exists():
            return cls._read(directory, identity=identity, policy=policy)
        report = verify_log(directory, key, allow_unsealed_tail=True)  # a running agent has not sealed its tail
        if not report.ok:
            raise PrivacyReportError(f"{directory}: audit log fails verification: {report.first_problem}")
        return cls._read(directory, identity=identity, policy=policy)

    @classmethod
    def _read(cls, directory: Path, *, identity: str, policy: Any) -> LifetimeLedger:
        runs = []
        for number, raw in enumerate(read_lines(directory / ENTRIES).lines, start=1):
            entry = json.loads(raw)["entry"]
            if entry["action"] != SPENT or entry["actor"] != identity:
                continue
            try:
                runs.append(LedgerRun.model_validate(entry["details"]["run"]))
            except (KeyError, TypeError, ValidationError) as exc:
                raise PrivacyReportError(f"{directory / ENTRIES}:{number}: malformed {SPENT} entry: {exc}") \
                    from None
        privacy = policy.privacy
        return cls(identity=identity, runs=tuple(runs), limit=privacy.lifetime_epsilon, delta=privacy.max_delta,
                   accountant=privacy.accountant)

    def spent(self, *extra: tuple[float, float, int]) -> tuple[float, str]:
        """(lifetime ε of the recorded runs plus ``extra`` (σ, q, steps) runs, the accountant used)."""
        history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in self.runs] + list(extra)
        return compose_epsilon(history, delta=self.delta, accountant=self.accountant)

    def approve(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Refuse a planned run that would take the member past ``lifetime_epsilon`` (called before step 1)."""
        if self.limit is None:
            return
        total, used = self.spent((noise_multiplier, sample_rate, steps))
        if total > self.limit:
            before = self.spent()[0]
            raise LifetimeBudgetExceededError(
                f"this training would bring {self.identity}'s lifetime epsilon to {total:.3f} (now {before:.3f} "
                f"after {len(self.runs)} training(s)), past the policy's lifetime_epsilon {self.limit} "
                f"({used.upper()} composition at delta={self.delta:g}); lower [privacy].epsilon or do not retrain")

    def record(self, audit: AuditLog, signed: SignedPrivacyReport) -> LedgerRun:
        """Append the finished run (``privacy.spent``) and return it."""
        report = signed.report
        run = LedgerRun(report_sha256=report_sha256(signed), created_at=report.created_at, epsilon=report.epsilon,
                        delta=report.delta, noise_multiplier=report.noise_multiplier,
                        sample_rate=report.sample_rate, steps=report.steps)
        total, used = LifetimeLedger(self.identity, (*self.runs, run), self.limit, self.delta,
                                     self.accountant).spent()
        audit.append(actor=self.identity, action=SPENT, digests={"privacy_report_sha256": run.report_sha256},
                     details={"run": run.model_dump(mode="json"), "runs": len(self.runs) + 1,
                              "lifetime_epsilon": total, "lifetime_limit": self.limit,
                              "composition": composition_statement(accountant=used, delta=self.delta)})
        return run
