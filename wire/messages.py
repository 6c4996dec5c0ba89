"""Typed messages exchanged over mutual TLS (API version ``v1``).

Every model is strict (`extra="forbid"`) and frozen: an unknown or mistyped field is a 422
with the field's path, never a silently ignored value. Raw input must be I-JSON
(:mod:`wire.strict`: valid Unicode, integers a float holds exactly, finite numbers) — checked
before any field, free-form objects such as envelopes included — so no value that would
overflow or fail to encode later gets past the edge. Binary payloads (PNG images, CKKS
contexts and ciphertexts inside envelopes) travel base64-encoded.

Endpoints (all under ``/v1``; the caller's identity comes from its verified client
certificate, never from a field in these messages)::

    POST /v1/enrol                 EnrolRequest        -> EnrolResponse
    GET  /v1/context               (octet-stream: the public CKKS context)
    POST /v1/calibration           CalibrationReport   -> Ack
    GET  /v1/tasks/next?wait=S     -> ScoringTask (200) | 204 when none within S seconds
    POST /v1/tasks/{id}/decline    TaskDecline         -> Ack  (the agent's local policy refuses it)
    POST /v1/submissions           Submission          -> Receipt
    GET  /v1/audit/checkpoint      -> SignedCheckpoint
    GET  /v1/audit/proof/{index}   -> SignedInclusionProof
    GET  /v1/status                -> ServerStatus        (and GET /status: the HTML page)

Auditor-only routes (the whole log, consistency proofs, privacy reports, digests): :mod:`wire.audit_export`.

Key holder (fused-only mode; a separate process that owns the CKKS secret key)::

    GET  /v1/context               (octet-stream: the public CKKS context)
    POST /v1/decrypt-fused         DecryptFusedRequest -> DecryptFusedResponse   (server identity only)
    POST /v1/decrypt-agent         DecryptAgentRequest -> DecryptAgentResponse   (server identity only; public
                                   rounds only, opt-in by policy; the key holder checks the agent's signature)

Signed values (receipts, privacy reports) follow one rule: the signature (``signature_b64``,
Ed25519) covers ``canonical_json`` of the value's JSON object *without* its ``signature_b64``
key — exactly the object as sent, so a verifier never re-encodes numbers.

Tasks are created by the round coordinator through ``StateStore.create_round`` with a
:class:`TaskPayload` (``.model_dump()``) per agent; the service turns a row into a
:class:`ScoringTask`.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crypto.canonical import canonical_json
from wire.strict import require_strict_json

API_VERSION = "v1"
PrivacyMode = Literal["tls-only", "ckks", "fused-only"]
TaskKind = Literal["calibrate", "router", "score"]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _strict_json(cls, data: Any) -> Any:
        return require_strict_json(data)


class ErrorBody(WireModel):
    """Body of every 4xx/5xx reply: a machine code and a precise human message."""

    code: str
    message: str


class EnrolRequest(WireModel):
    signing_public_key_b64: str = Field(description="raw Ed25519 key that signs this agent's envelopes")
    privacy_report: dict[str, Any] = Field(description="the agent's signed privacy report")
    architecture: str = Field(max_length=200)


class EnrolResponse(WireModel):
    agent: str
    privacy_mode: PrivacyMode
    policy_digest: str
    server_signing_public_key_b64: str
    context_sha256: str | None = Field(description="sha256 of the public CKKS context; None under tls-only")
    calibration: list[TaskItem]
    calibration_prompts: list[PromptPayload]


class PromptPayload(WireModel):
    prompt_id: str = Field(max_length=200)
    question: str = Field(max_length=2000)
    image_png_b64: str


class TaskItem(WireModel):
    prompt_index: int = Field(ge=0)
    response: str = Field(max_length=4000)


class CalibrationReport(WireModel):
    mean: float = Field(allow_inf_nan=False)
    std: float = Field(gt=0, allow_inf_nan=False)
    n: int = Field(gt=0)


class ScoringTask(WireModel):
    task_id: str
    round_id: str
    kind: TaskKind
    privacy_mode: PrivacyMode
    prompts: list[PromptPayload]
    items: list[TaskItem]
    issued_at: float
    deadline: float


class Submission(WireModel):
    task_id: str
    envelope: dict[str, Any] = Field(description="crypto envelope, as produced by the crypto package")


class Receipt(WireModel):
    """The server's signed acknowledgement; the agent stores it in its own audit log."""

    task_id: str
    round_id: str
    agent: str
    envelope_sha256: str
    received_at: float
    audit_index: int
    audit_leaf_sha256: str
    signature_b64: str = ""


    def signed_bytes(self) -> bytes:
        """What ``signature_b64`` signs: canonical JSON of every other field."""
        return canonical_json(self.model_dump(mode="json", exclude={"signature_b64"}))


class EnrolmentReport(BaseModel):
    """What an agent discloses of its privacy report at enrolment, signed by its enrolling key.

    Not the member's own report (``client_agent.privacy_report.PrivacyReport``, kept and signed
    locally): this is the wire summary derived from it — identity instead of the local agent id,
    the architecture possibly withheld, the local report's SHA-256, the key binding — with
    extra accountant details kept (and signed) as sent. :meth:`signed` (agent) and
    :meth:`verified` (server) are the one definition of what the signature covers.
    """

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _strict_json(cls, data: Any) -> Any:
        return require_strict_json(data)

    identity: str = Field(description="the agent's mor:// identity (must equal its certificate's)")
    epsilon: float = Field(ge=0, description="the accountant's epsilon for the trained reward model")
    delta: float = Field(ge=0, lt=1)
    signature_b64: str = Field(description="Ed25519 signature by the enrolling signing key")

    @staticmethod
    def signed(body: dict[str, Any], sign: Any) -> dict[str, Any]:
        """``body`` with ``signature_b64`` over canonical JSON of every other key (``sign``: bytes -> signature)."""
        unsigned = {k: v for k, v in body.items() if k != "signature_b64"}
        return {**unsigned, "signature_b64": base64.b64encode(sign(canonical_json(unsigned))).decode("ascii")}

    @classmethod
    def verified(cls, raw: dict[str, Any], verify: Any) -> EnrolmentReport:
        """Validate ``raw`` and check its signature (``verify(signature, data)`` raises if it fails).

        Raises pydantic's ValidationError for a malformed report and ValueError (binascii's
        included) or the verifier's own error for a signature that does not check out.
        """
        report = cls.model_validate(raw)
        unsigned = {k: v for k, v in raw.items() if k != "signature_b64"}
        verify(base64.b64decode(report.signature_b64, validate=True), canonical_json(unsigned))
        return report


class TaskPayload(WireModel):
    """What the coordinator stores per task; ids, mode and times come from the task row."""

    kind: TaskKind
    prompts: list[PromptPayload]
    items: list[TaskItem]

    def digest(self) -> str:
        """SHA-256 (hex) of exactly these prompts and items (see :func:`payload_digest`)."""
        return payload_digest(self.kind, self.prompts, self.items)


def payload_digest(kind: str, prompts: list[PromptPayload], items: list[TaskItem]) -> str:
    """One name for a task's content: the kind, every prompt (image bytes included) and every item, in order.

    The consortium publishes the digests of its public calibration and router rounds in the
    policy (``privacy.public_round_digests``); a member recomputes this from the task it was
    sent and signs it into its envelope, so a round is "public" because its content is, not
    because its id says so.
    """
    body = {"kind": kind, "prompts": [p.model_dump(mode="json") for p in prompts],
            "items": [i.model_dump(mode="json") for i in items]}
    return hashlib.sha256(canonical_json(body)).hexdigest()


class DecryptFusedRequest(WireModel):
    round_id: str = Field(max_length=256, description="which round's fused reward this is (for the log)")
    sealed: dict[str, Any] = Field(description="crypto.ckks.SealedVector.to_dict() of the fused ciphertext")


class DecryptFusedResponse(WireModel):
    values: list[float] = Field(description="the fused reward, rounded by the key owner")
    decryptions: int = Field(description="ciphertexts this key holder has decrypted in total")
    audit_index: int


class DecryptAgentRequest(WireModel):
    """fused-only, public rounds only: one agent's envelope for the key holder to open after its own checks."""

    envelope: dict[str, Any] = Field(description="the agent's signed envelope (crypto.envelope.Envelope.to_dict())")
    key_binding: dict[str, Any] = Field(description="the agent's key binding from its enrolment "
                                                    "(crypto.key_binding.bind_signing_key)")


class DecryptAgentResponse(WireModel):
    agent: str
    round_id: str = Field(description="the round id the agent signed (a calibrate- or router- round)")
    values: list[float] = Field(description="the agent's scores, rounded by the key owner")
    agent_decryptions: int = Field(description="per-agent envelopes this key holder has decrypted in total")
    audit_index: int


class TaskDecline(WireModel):
    """An agent's refusal of a task under its local policy: the task leaves its queue (audited)."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    reason: str = Field(max_length=1000)


class Ack(WireModel):
    ok: bool = True
    audit_index: int


class SignedCheckpoint(WireModel):
    origin: str
    size: int
    root_sha256: str
    timestamp: float
    signature_b64: str


class SignedInclusionProof(WireModel):
    """An audit inclusion proof (``audit.InclusionProof``) together with the signed head it is for.

    Built only by :func:`audit.wire_form.inclusion_to_wire`, so field names cannot drift.
    """

    index: int
    tree_size: int
    leaf_sha256: str
    path_sha256: list[str]
    checkpoint: SignedCheckpoint


class AgentStatus(WireModel):
    agent: str
    architecture: str
    epsilon: float
    delta: float
    epsilon_budget: float
    online: bool
    last_seen: float | None
    submissions: int
    lifetime_epsilon: float | None = None  # every DP training this member ran, composed (its signed report)
    lifetime_budget: float | None = None  # the policy's privacy.lifetime_epsilon (None: no lifetime cap)
    noise_source: str | None = None  # where its DP noise came from, from its signed report (a pilot PRNG says so)


class ServerStatus(WireModel):
    consortium: str
    privacy_mode: PrivacyMode
    policy_digest: str
    agents: list[AgentStatus]
    rounds_completed: int
    rounds_skipped: int
    current_round: str | None
    audit_size: int
    audit_root_sha256: str
    router_weights: dict[str, float]


EnrolResponse.model_rebuild()
