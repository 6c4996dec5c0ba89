"""The signed privacy report: what one client spent training its reward model, verifiably.

A plain frozen value (pydantic, strict, no extra keys) signed with the agent's Ed25519
signing key over :func:`crypto.canonical.canonical_json` of its JSON form — the same
encoding every signature in MoR-Secure covers — so the server and any auditor can check it
later without trusting the channel it came over. ``SignedPrivacyReport.verify`` is the only
way to get the report back out of a received document: verify, then use.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from client_agent.dp.train import PrivateTrainingResult
from client_agent.errors import PrivacyReportError
from crypto.canonical import canonical_json
from crypto.errors import IntegrityError
from crypto.signing import SigningKey, VerifyKey
from policies.lifetime import LedgerRun

REPORT_VERSION: Literal[1] = 1
__all__ = ["REPORT_VERSION", "PrivacyReport", "PrivacyReportError", "SignedPrivacyReport"]


class PrivacyReport(BaseModel):
    """Everything needed to re-derive and audit the privacy claim of one training run."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    version: Literal[1] = 1
    agent_id: str = Field(min_length=1)
    epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    accountant: str
    noise_multiplier: float = Field(gt=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=0)
    epochs: int = Field(ge=1)
    dataset_size: int = Field(ge=1)
    max_grad_norm: float = Field(gt=0)
    clipping: str
    secure_mode: bool
    insecure_pilot: bool
    noise_source: str = Field(min_length=1)  # where DP noise and sampling came from (CSPRNG or pilot PRNG)
    model_arch: str
    model_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: str
    # the member's lifetime ledger when this run was made (client_agent.budget_ledger): the runs
    # before it, and all of them composed with this one as policies.lifetime states
    prior_runs: tuple[LedgerRun, ...] = Field(default=(), strict=False)
    lifetime_epsilon: float | None = Field(default=None, ge=0)
    lifetime_composition: str | None = None

    @field_validator("created_at")
    @classmethod
    def _iso_utc(cls, value: str) -> str:
        parsed = datetime.fromisoformat(value)
        if parsed.utcoffset() is None:
            raise ValueError("created_at must carry a UTC offset")
        return value

    @classmethod
    def from_training(
        cls, result: PrivateTrainingResult, *, agent_id: str, model_digest: str, now: datetime | None = None,
        prior_runs: tuple[LedgerRun, ...] = (), lifetime: tuple[float, str] | None = None,
    ) -> PrivacyReport:
        """Build from a training result; ``now`` is a parameter so tests control the clock.

        ``lifetime`` is (lifetime ε including this run, how it was composed).
        """
        when = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
        return cls(
            agent_id=agent_id, epsilon=result.epsilon, delta=result.delta, accountant=result.accountant,
            noise_multiplier=result.noise_multiplier, sample_rate=result.sample_rate, steps=result.steps,
            epochs=result.epochs, dataset_size=result.dataset_size, max_grad_norm=result.max_grad_norm,
            clipping=result.clipping, secure_mode=result.secure_mode, insecure_pilot=result.insecure_pilot,
            noise_source=result.noise_source, model_arch=result.arch, model_digest=model_digest, created_at=when,
            prior_runs=prior_runs, lifetime_epsilon=lifetime[0] if lifetime else None,
            lifetime_composition=lifetime[1] if lifetime else None,
        )

    def signing_bytes(self) -> bytes:
        return canonical_json({"type": "mor-secure/privacy-report", "report": self.model_dump(mode="json")})

    def sign(self, key: SigningKey) -> SignedPrivacyReport:
        signature = key.sign(self.signing_bytes())
        return SignedPrivacyReport(
            report=self, signer=key.verify_key().fingerprint(), signature=base64.b64encode(signature).decode()
        )


class SignedPrivacyReport(BaseModel):
    """A report with its Ed25519 signature and the signer's key fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    report: PrivacyReport
    signer: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str

    def verify(self, key: VerifyKey) -> PrivacyReport:
        """Return the report iff ``key`` signed exactly it; else raise :class:`IntegrityError`."""
        try:
            raw = base64.b64decode(self.signature, validate=True)
        except (binascii.Error, ValueError):
            raise IntegrityError() from None
        if key.fingerprint() != self.signer:
            raise IntegrityError()
        key.verify(raw, self.report.signing_bytes())
        return self.report

    def to_json(self) -> str:
        return canonical_json(self.model_dump(mode="json")).decode()

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<privacy report>") -> SignedPrivacyReport:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(document)"
            raise PrivacyReportError(f"{source}: {where}: {first['msg']}") from None
