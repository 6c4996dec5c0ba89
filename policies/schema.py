"""The consortium policy as typed, frozen, validated values.

Why pydantic models and not a dict: a policy is a compliance artefact. Every key is known
(``extra="forbid"`` turns a typo into an error instead of a silently ignored protection), every
value is type-checked strictly (``max_epsilon = "3"`` is an error, not a guess), and the
effective policy, defaults filled in, can be printed and hashed so the audit log records
exactly which rules were in force.

Rules that involve two keys are :class:`PydanticCustomError` s of type ``policy_rule`` whose
context names the offending key, so the loader can point at ``rounds.quorum`` rather than at
the whole table.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from crypto.canonical import canonical_json
from crypto.errors import PKIError
from crypto.pki import parse_identity
from policies.fusion import Fusion, check_fusion_fits
from policies.section import Section as _Section
from policies.section import rule

# HE security standard (homomorphicencryption.org, 2018), 128-bit classical security, ternary secret:
# the largest total coefficient-modulus size, in bits, for each polynomial modulus degree N.
HE_STANDARD_MAX_BITS = {2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# Fresh CKKS noise sits around 2**(20 - scale_bits) after a weighted sum (2.3e-7 measured at scale 40):
# a release precision finer than that would publish noise bits (Li-Micciancio key recovery).
CKKS_NOISE_BITS = 20

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

PrivacyMode = Literal["tls-only", "ckks", "fused-only"]


def _name(value: str) -> str:
    # Same alphabet as certificate identities (crypto.pki): the consortium is part of every mor:// URI.
    if not _NAME.match(value):
        raise ValueError("use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return value


def _identity(value: str) -> str:
    try:
        if not value.isprintable() or value != value.strip():  # crypto.pki's `$` lets a trailing newline pass
            raise PKIError(value)
        parse_identity(value)
    except PKIError:
        raise ValueError("not a mor://<consortium>/<server|client|keyholder|auditor>/<name> identity") from None
    return value


def _not_empty(value: Path) -> Path:
    if str(value) in ("", "."):
        raise ValueError("must name a file or folder")
    return value


Name = Annotated[str, AfterValidator(_name)]
Identity = Annotated[str, AfterValidator(_identity)]
PathSetting = Annotated[Path, Field(strict=False), AfterValidator(_not_empty)]


class Admission(_Section):
    """Who may connect, beyond holding an unrevoked certificate from the consortium CA."""

    allow_all_certified: bool = False
    allowed_identities: tuple[Identity, ...] = Field(default=(), strict=False)
    revocation_list: PathSetting | None = None


class Privacy(_Section):
    """How scores travel and how much of its privacy budget each client may spend."""

    mode: PrivacyMode = "ckks"
    max_epsilon: float = Field(gt=0, le=100)
    max_delta: float = Field(gt=0, lt=1e-3)
    accountant: Literal["prv", "rdp", "gdp"] = "prv"
    # every DP training one member ever runs, composed with `accountant` (policies.lifetime); None = no cap
    lifetime_epsilon: float | None = Field(default=None, gt=0, le=1000)
    # fused-only: may the key holder release each agent's scores on the PUBLIC calibrate/router
    # rounds (never score rounds) to the server, so calibration is measured and the router fitted?
    public_rounds_per_agent: bool = False
    # ... and only for these rounds: SHA-256 of each public round's exact content (prompts, images,
    # answers; wire.messages.payload_digest, printed by `mor server public-digests`). Members sign
    # the digest of what they scored; they and the key holder refuse any other "public" round.
    public_round_digests: list[str] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _digests_are_sha256(self) -> Privacy:
        for i, digest in enumerate(self.public_round_digests):
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise rule(f"privacy.public_round_digests[{i}]", f"{digest!r} is not a lowercase hex SHA-256")
        return self

    @model_validator(mode="after")
    def _lifetime_holds_one_training(self) -> Privacy:
        if self.lifetime_epsilon is not None and self.lifetime_epsilon < self.max_epsilon:
            raise rule("privacy.lifetime_epsilon", f"must be >= privacy.max_epsilon ({self.max_epsilon}): "
                       f"got {self.lifetime_epsilon}, which one full training could already exceed")
        return self


class Rounds(_Section):
    """When a GRPO round's scores are fused, and how big a round is."""

    quorum: int = Field(ge=1, le=10_000)
    deadline_s: float = Field(gt=0, le=86_400)
    group_size: int = Field(ge=2, le=256)
    prompts_per_round: int = Field(ge=1, le=100_000)
    # a member whose own vector is refused (non-finite, out of range, undecryptable, malformed) this
    # many rounds in a row is not asked again for quarantine_s seconds (audited; server/quarantine.py)
    quarantine_after_failures: int = Field(default=3, ge=1, le=1000)
    quarantine_s: float = Field(default=3600.0, gt=0, le=30 * 86_400)


class Scores(_Section):
    """What a client's calibrated reward scores may look like."""

    min: float = -10.0
    max: float = 10.0
    out_of_range: Literal["clip", "refuse"] = "refuse"
    max_vector_length: int = Field(default=4096, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _range_is_ordered(self) -> Scores:
        if not self.min < self.max:
            raise rule("scores.max", f"must be greater than scores.min (got min = {self.min}, max = {self.max})")
        return self


class Audit(_Section):
    """Where the tamper-evident log lives and how long it is kept."""

    log_dir: PathSetting = Path("audit")
    checkpoint_every: int = Field(default=64, ge=1, le=1_000_000)
    retention_days: int = Field(ge=1, le=36_500)


class Limits(_Section):
    """Per-request and per-agent limits on the HTTP API."""

    max_body_bytes: int = Field(default=4_000_000, ge=1024, le=1 << 31)
    requests_per_minute: int = Field(default=600, ge=1, le=1_000_000)


class CKKS(_Section):
    """Encryption parameters for score vectors (ignored, but still validated, under tls-only)."""

    poly_modulus_degree: Literal[2048, 4096, 8192, 16384, 32768] = 8192
    coeff_mod_bit_sizes: tuple[Annotated[int, Field(ge=20, le=60)], ...] = Field(
        default=(60, 40, 40, 60), strict=False, min_length=2, max_length=30
    )
    scale_bits: int = Field(default=40, ge=20, le=60)
    release_precision: float = Field(default=1e-4, gt=0, le=1.0)

    @model_validator(mode="after")
    def _secure_and_sound(self) -> CKKS:
        total, limit = sum(self.coeff_mod_bit_sizes), HE_STANDARD_MAX_BITS[self.poly_modulus_degree]
        if total > limit:
            raise rule("ckks.coeff_mod_bit_sizes",
                       f"total {total} bits exceeds the HE standard's 128-bit security limit of {limit} bits "
                       f"for poly_modulus_degree = {self.poly_modulus_degree}")
        middle = self.coeff_mod_bit_sizes[1:-1]
        if any(bits < self.scale_bits for bits in middle):
            raise rule("ckks.scale_bits", f"{self.scale_bits} is larger than a middle prime of coeff_mod_bit_sizes "
                                          f"{list(self.coeff_mod_bit_sizes)}: rescaling would lose the values")
        floor = 2.0 ** (CKKS_NOISE_BITS - self.scale_bits)
        if self.release_precision < floor:
            raise rule("ckks.release_precision",
                       f"must be >= {floor:.3g} (2^({CKKS_NOISE_BITS} - scale_bits)): finer rounding would release "
                       f"CKKS noise, which leaks the secret key (Li-Micciancio) (got {self.release_precision})")
        return self


class Policy(_Section):
    """A consortium policy. Build it with :func:`policies.load_policy`; print it with :meth:`to_dict`."""

    consortium: Name
    pilot: bool = False
    admission: Admission
    privacy: Privacy
    rounds: Rounds
    scores: Scores = Scores()
    audit: Audit
    limits: Limits = Limits()
    ckks: CKKS = CKKS()
    fusion: Fusion = Fusion()

    @model_validator(mode="after")
    def _cross_checks(self) -> Policy:
        if self.privacy.mode == "tls-only" and not self.pilot:
            raise rule("privacy.mode", "'tls-only' sends every client's scores to the server in the clear; "
                                       "it is allowed only in a pilot (set pilot = true, never with real data)")
        if self.privacy.public_rounds_per_agent and self.privacy.mode != "fused-only":
            raise rule("privacy.public_rounds_per_agent",
                       f"applies only to mode = 'fused-only' (under {self.privacy.mode!r} the server already sees "
                       "every agent's scores): remove it or set mode = 'fused-only'")
        self._check_admission()
        self._check_round_fits()
        check_fusion_fits(self.fusion, mode=self.privacy.mode, quorum=self.rounds.quorum)
        return self

    def _check_admission(self) -> None:
        admission = self.admission
        if admission.allow_all_certified and admission.allowed_identities:
            raise rule("admission.allow_all_certified",
                       "cannot be true while allowed_identities is listed (which one applies?): remove one")
        if not admission.allow_all_certified and not admission.allowed_identities:
            raise rule("admission.allowed_identities",
                       "list at least one identity or set allow_all_certified = true (nobody would be admitted)")
        seen: set[str] = set()
        for index, identity in enumerate(admission.allowed_identities):
            key = f"admission.allowed_identities[{index}]"
            if identity in seen:
                raise rule(key, f"{identity} is listed twice")
            seen.add(identity)
            consortium = parse_identity(identity)[0]
            if consortium != self.consortium:
                raise rule(key, f"{identity} belongs to consortium {consortium!r}, not {self.consortium!r}")
        clients = [i for i in admission.allowed_identities if parse_identity(i)[1] == "client"]
        if admission.allowed_identities and self.rounds.quorum > len(clients):
            raise rule("rounds.quorum", f"{self.rounds.quorum} exceeds the {len(clients)} client identities in "
                                        "admission.allowed_identities: no round could ever reach quorum")

    def _check_round_fits(self) -> None:
        per_round = self.rounds.group_size * self.rounds.prompts_per_round
        if per_round > self.scores.max_vector_length:
            raise rule("rounds.prompts_per_round",
                       f"a round needs group_size x prompts_per_round = {per_round} scores per client, more than "
                       f"scores.max_vector_length = {self.scores.max_vector_length}")
        slots = self.ckks.poly_modulus_degree // 2
        if self.privacy.mode != "tls-only" and self.scores.max_vector_length > slots:
            raise rule("scores.max_vector_length",
                       f"{self.scores.max_vector_length} does not fit one ciphertext: poly_modulus_degree = "
                       f"{self.ckks.poly_modulus_degree} holds {slots} slots")
        largest = max(abs(self.scores.min), abs(self.scores.max))
        integer_bits = self.ckks.coeff_mod_bit_sizes[0] - self.ckks.scale_bits
        if self.privacy.mode != "tls-only" and largest >= 2.0 ** (integer_bits - 1):
            raise rule("ckks.scale_bits", f"leaves {integer_bits} integer bits in the first prime "
                                          f"({self.ckks.coeff_mod_bit_sizes[0]} - {self.ckks.scale_bits}): too few "
                                          f"for scores up to {largest:g} (scores.min/scores.max)")

    def insecure_reasons(self) -> list[str]:
        """Every protection this policy switches off: for the loud warning and the audit log."""
        reasons = []
        if self.pilot:
            reasons.append("pilot = true: protections may be switched off; use only with synthetic data")
        if self.privacy.mode == "tls-only":
            reasons.append("privacy.mode = tls-only: the server sees every client's scores in the clear")
        return reasons

    def to_dict(self) -> dict[str, Any]:
        """The effective policy (defaults filled in) as plain JSON values."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of :meth:`to_dict`: the audit log's 'rules in force'."""
        return "sha256:" + hashlib.sha256(canonical_json(self.to_dict())).hexdigest()
