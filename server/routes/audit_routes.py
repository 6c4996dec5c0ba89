"""``GET /v1/audit/checkpoint`` and ``GET /v1/audit/proof/{index}``: let anyone holding a receipt
check that the server logged it, without trusting the server (RFC 9162-style Merkle proofs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from server.admission import Caller
from server.rejections import Rejection
from server.routes.common import any_caller, services_of
from wire.messages import SignedCheckpoint, SignedInclusionProof

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/checkpoint", response_model=SignedCheckpoint, summary="The audit log's signed tree head")
def checkpoint(request: Request, _caller: Annotated[Caller, Depends(any_caller)]) -> SignedCheckpoint:
    return SignedCheckpoint.model_validate(services_of(request).audit.checkpoint())


@router.get("/proof/{index}", response_model=SignedInclusionProof, summary="Inclusion proof of one audit entry")
def proof(index: Annotated[int, Path(ge=0)], request: Request,
          _caller: Annotated[Caller, Depends(any_caller)]) -> SignedInclusionProof:
    audit = services_of(request).audit
    size = audit.size()
    if index >= size:
        raise Rejection(404, "unknown_audit_index", f"audit index {index} is beyond the log (size {size})")
    return SignedInclusionProof.model_validate(audit.proof(index))
