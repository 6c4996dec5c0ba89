"""The consortium policy as typed, frozen, validated values.

Why pydantic models and not a dict: a policy is a compliance artefact. Every key is known
(`extra="forbid"` turns a typo into an error instead of a silently ignored protection), every
value is checked, and the effective policy (defaults filled in) can be printed and hashed so
the audit log records exactly which rules were in force.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crypto.canonical import canonical_json

IDENTITY_RE = re.compile(r"^mor://[A-Za-z0-9._-]+/(server|client|keyholder|auditor)/[A-Za-z0-9._-]+$")
# HE security standard (homomorphicencryption.org, 128-bit classical): max total coeff modulus bits per N.
HE_STANDARD_MAX_BITS = {2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Admission(_Section):
    """Who may connect, beyond holding a certificate from the consortium CA."""

    allow_all_certified: bool = False
    allowed_identities: tuple[str, ...] = ()
    revocation_list: Path | None = Field(default=None, description="CRL path, relative to the policy file")

    @field_validator("allowed_identities")
    @classmethod
    def _identities_are_uris(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for identity in value:
            if not IDENTITY_RE.match(identity):
                raise ValueError(f"not a mor://<consortium>/<role>/<name> identity: {identity!r}")
        return value

    @model_validator(mode="after")
    def _someone_is_admitted(self) -> Admission:
        if not self.allow_all_certified and not self.allowed_identities:
            raise ValueError("set allow_all_certified = true or list allowed_identities (nobody would be admitted)")
        return self


class Privacy(_Section):
    """How scores travel and how much each client may spend of its privacy budget."""

    mode: Literal["tls-only", "ckks", "fused-only"] = "ckks"
    max_epsilon: float = Field(gt=0, le=100)
    max_delta: float = Field(gt=0, lt=1e-3)
    accountant: Literal["prv", "rdp", "gdp"] = "prv"


class Rounds(_Section):
    quorum: int = Field(ge=1, description="clients that must answer before a round is fused")
    deadline_s: float = Field(gt=0, le=86400)
    group_size: int = Field(ge=2, le=64, description="GRPO generations per prompt")
    prompts_per_round: int = Field(ge=1, le=4096)


class Scores(_Section):
    min: float = -10.0
    max: float = 10.0
    out_of_range: Literal["clip", "refuse"] = "refuse"
    max_vector_length: int = Field(default=4096, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _range_is_ordered(self) -> Scores:
        if not self.min < self.max:
            raise ValueError(f"min must be < max (got min={self.min}, max={self.max})")
        return self


class Audit(_Section):
    log_dir: Path = Path("audit")
    checkpoint_every: int = Field(default=64, ge=1, le=100_000)
    retention_days: int = Field(ge=1)


class Limits(_Section):
    max_body_bytes: int = Field(default=4_000_000, ge=1024)
    requests_per_minute: int = Field(default=600, ge=1)


class CKKS(_Section):
    poly_modulus_degree: Literal[2048, 4096, 8192, 16384, 32768] = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = Field(default=40, ge=20, le=60)
    release_precision: float = Field(default=1e-4, gt=0, le=1.0)

    @model_validator(mode="after")
    def _within_he_standard(self) -> CKKS:
        total = sum(self.coeff_mod_bit_sizes)
        limit = HE_STANDARD_MAX_BITS[self.poly_modulus_degree]
        if total > limit:
            raise ValueError(
                f"coeff_mod_bit_sizes total {total} bits exceeds the HE standard's 128-bit limit of {limit} bits "
                f"for poly_modulus_degree {self.poly_modulus_degree}"
            )
        if len(self.coeff_mod_bit_sizes) < 3:
            raise ValueError("coeff_mod_bit_sizes needs at least 3 primes (one multiplication level)")
        return self


class Policy(_Section):
    """A consortium policy. Build it with :func:`policies.load_policy`, never by hand in production."""

    consortium: str = Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=100)
    pilot: bool = Field(default=False, description="a pilot may switch protections off, loudly")
    admission: Admission
    privacy: Privacy
    rounds: Rounds
    scores: Scores = Scores()
    audit: Audit
    limits: Limits = Limits()
    ckks: CKKS = CKKS()

    @model_validator(mode="after")
    def _insecure_only_in_pilots(self) -> Policy:
        if self.privacy.mode == "tls-only" and not self.pilot:
            raise ValueError("privacy.mode 'tls-only' sends scores in the clear to the server: set pilot = true")
        return self

    def insecure_reasons(self) -> list[str]:
        """Every protection this policy switches off, for the warning and the audit log."""
        reasons = []
        if self.privacy.mode == "tls-only":
            reasons.append("privacy.mode = tls-only: the server sees every client's scores in the clear")
        if self.pilot:
            reasons.append("pilot = true: clients may train without secure_mode (non-cryptographic DP noise)")
        return reasons

    def to_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """sha256 of the effective policy: what the audit log cites as 'the rules in force'."""
        return "sha256:" + hashlib.sha256(canonical_json(self.to_dict())).hexdigest()
