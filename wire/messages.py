"""Typed messages exchanged over mutual TLS (API version ``v1``).

Every model is strict (`extra="forbid"`) and frozen: an unknown or mistyped field is a 422
with the field's path, never a silently ignored value. Binary payloads (PNG images, CKKS
contexts and ciphertexts inside envelopes) travel base64-encoded.

Endpoints (all under ``/v1``; the caller's identity comes from its verified client
certificate, never from a field in these messages)::

    POST /v1/enrol                 EnrolRequest        -> EnrolResponse
    GET  /v1/context               (octet-stream: the public CKKS context)
    POST /v1/calibration           CalibrationReport   -> Ack
    GET  /v1/tasks/next?wait=S     -> ScoringTask (200) | 204 when none within S seconds
    POST /v1/submissions           Submission          -> Receipt
    GET  /v1/audit/checkpoint      -> SignedCheckpoint
    GET  /v1/audit/proof/{index}   -> InclusionProof
    GET  /v1/status                -> ServerStatus        (and GET /status: the HTML page)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "v1"
PrivacyMode = Literal["tls-only", "ckks", "fused-only"]
TaskKind = Literal["calibrate", "router", "score"]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


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
    mean: float
    std: float = Field(gt=0)
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


class Ack(WireModel):
    ok: bool = True
    audit_index: int


class SignedCheckpoint(WireModel):
    origin: str
    size: int
    root_sha256: str
    timestamp: float
    signature_b64: str


class InclusionProof(WireModel):
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
