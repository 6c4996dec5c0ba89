"""The key holder's HTTP API (mutual TLS, same gate and refusal handling as the server).

    GET  /v1/context          the public context (anyone certified)
    POST /v1/decrypt-fused    DecryptFusedRequest -> DecryptFusedResponse (server identity only)
    POST /v1/decrypt-agent    DecryptAgentRequest -> DecryptAgentResponse (server identity only;
                              public calibrate/router rounds only, see server.keyholder.public_rounds)
    GET  /v1/keyholder/status decryption counts (fused and per-agent apart) and context digest
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel

from crypto.ckks import CKKSKeyOwner, SealedVector
from crypto.errors import IntegrityError
from server.admission import AdmissionControl, Caller
from server.gate import Gate
from server.keyholder.public_rounds import PublicRoundGate
from server.rejections import Rejection
from server.replies import install_rejection_handling
from server.routes.common import any_caller
from server.services import AuditTrail
from wire.messages import (
    API_VERSION,
    DecryptAgentRequest,
    DecryptAgentResponse,
    DecryptFusedRequest,
    DecryptFusedResponse,
)


@dataclass
class DecryptionCounts:
    """Requests served, fused and per-agent apart (``CKKSKeyOwner.decryptions`` counts ciphertexts)."""

    fused: int = 0
    agent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str) -> int:
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)
            return int(getattr(self, kind))


@dataclass(frozen=True)
class KeyHolderServices:
    owner: CKKSKeyOwner
    server_identity: str
    audit: AuditTrail
    admission: AdmissionControl
    max_body_bytes: int
    public_rounds: PublicRoundGate | None = None  # None: per-agent decryption refused
    counts: DecryptionCounts = field(default_factory=DecryptionCounts)


class KeyHolderStatus(BaseModel):
    context_sha256: str
    decryptions: int
    fused_decryptions: int
    agent_decryptions: int
    public_rounds_per_agent: bool
    server_identity: str


router = APIRouter(prefix="/v1")


def _services(request: Request) -> KeyHolderServices:
    services: KeyHolderServices = request.app.state.services
    return services


def _server_only(services: KeyHolderServices, caller: Caller) -> None:
    if caller.identity != services.server_identity:
        raise Rejection(403, "not_server", f"{caller.identity} may not request decryptions; only "
                                           f"{services.server_identity} may")


@router.get("/context", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
def context(request: Request, _caller: Annotated[Caller, Depends(any_caller)]) -> Response:
    public = _services(request).owner.public_context
    return Response(public.serialized, media_type="application/octet-stream",
                    headers={"X-Context-SHA256": public.sha256})


@router.post("/decrypt-fused", response_model=DecryptFusedResponse)
def decrypt_fused(body: DecryptFusedRequest, request: Request,
                  caller: Annotated[Caller, Depends(any_caller)]) -> DecryptFusedResponse:
    services = _services(request)
    _server_only(services, caller)
    try:
        sealed = SealedVector.from_dict(body.sealed)
        values = services.owner.decrypt(sealed)
    except IntegrityError:
        raise Rejection(400, "integrity_error", "sealed vector failed verification under this key") from None
    fused = services.counts.add("fused")
    entry = services.audit.record(caller.identity, "decrypt.fused", {
        "round_id": body.round_id, "sealed_sha256": hashlib.sha256(sealed.to_bytes()).hexdigest(),
        "length": sealed.length, "chunks": len(sealed.chunks), "decryptions": services.owner.decryptions,
        "fused_decryptions": fused, "precision": services.owner.precision,
    })
    return DecryptFusedResponse(values=values, decryptions=services.owner.decryptions, audit_index=entry.index)


@router.post("/decrypt-agent", response_model=DecryptAgentResponse)
def decrypt_agent(body: DecryptAgentRequest, request: Request,
                  caller: Annotated[Caller, Depends(any_caller)]) -> DecryptAgentResponse:
    services = _services(request)
    _server_only(services, caller)
    gate = services.public_rounds
    if gate is None:
        raise Rejection(403, "per_agent_disabled", "per-agent decryption is off: this key holder has no consortium "
                                                   "policy opting in (privacy.public_rounds_per_agent)")
    env, sealed = gate.check(body.envelope, body.key_binding)
    try:
        values = services.owner.decrypt(sealed)
    except IntegrityError:
        raise Rejection(400, "integrity_error", f"{env.sender}: ciphertext failed to decrypt under this key") from None
    count = services.counts.add("agent")
    entry = services.audit.record(caller.identity, "decrypt.agent", {
        "round_id": env.round_id, "agent": env.sender, "task_id": env.task_id, "envelope_sha256": env.sha256(),
        "length": sealed.length, "chunks": len(sealed.chunks), "agent_decryptions": count,
        "decryptions": services.owner.decryptions, "precision": services.owner.precision,
    })
    return DecryptAgentResponse(agent=env.sender, round_id=env.round_id, values=values, agent_decryptions=count,
                                audit_index=entry.index)


@router.get("/keyholder/status", response_model=KeyHolderStatus)
def status(request: Request, _caller: Annotated[Caller, Depends(any_caller)]) -> KeyHolderStatus:
    services = _services(request)
    gate = services.public_rounds
    return KeyHolderStatus(context_sha256=services.owner.public_context.sha256,
                           decryptions=services.owner.decryptions, fused_decryptions=services.counts.fused,
                           agent_decryptions=services.counts.agent,
                           public_rounds_per_agent=gate is not None and gate.enabled,
                           server_identity=services.server_identity)


def create_keyholder_app(services: KeyHolderServices) -> FastAPI:
    app = FastAPI(title="MoR-Secure key holder", version=API_VERSION, openapi_url=f"/{API_VERSION}/openapi.json",
                  docs_url=None, redoc_url=None)
    app.state.services = services
    reject = install_rejection_handling(app, services.audit.record)
    app.include_router(router)
    app.add_middleware(Gate, admission=services.admission, max_body_bytes=services.max_body_bytes, reject=reject)
    return app
