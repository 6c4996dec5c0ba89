"""``GET /v1/context`` (the public CKKS context) and ``POST /v1/calibration`` (score scale report)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from server.admission import Caller
from server.rejections import Rejection
from server.routes.common import any_caller, enrolled_agent, services_of
from wire.calibration import calibration_refusal
from wire.messages import Ack, CalibrationReport

router = APIRouter(prefix="/v1", tags=["keys"])


@router.get("/context", response_class=Response, summary="The public CKKS context (no secret key)",
            responses={200: {"content": {"application/octet-stream": {}}}})
def public_context(request: Request, _caller: Annotated[Caller, Depends(any_caller)]) -> Response:
    context = services_of(request).privacy.public_context
    if context is None:
        raise Rejection(404, "no_context", "privacy mode tls-only: there is no CKKS context")
    return Response(context.serialized, media_type="application/octet-stream",
                    headers={"X-Context-SHA256": context.sha256})


@router.post("/calibration", response_model=Ack, summary="Report score mean/std on the calibration batch")
def calibration(body: CalibrationReport, request: Request,
                agent: Annotated[tuple[Caller, dict[str, Any]], Depends(enrolled_agent)]) -> Ack:
    """A member's self-reported scale: bounded by the policy, and never over the server's own measurement."""
    services = services_of(request)
    caller, row = agent
    policy = services.policy
    reason = calibration_refusal(body.mean, body.std, score_min=policy.score_min, score_max=policy.score_max)
    if reason is not None:
        raise Rejection(422, "calibration_out_of_bounds", f"calibration {reason}")
    stored = json.loads(row["calibration"]) if row.get("calibration") else {}
    if stored.get("source") == "server-measured":  # the server's own measurement wins
        entry = services.audit.record(caller.identity, "agent.calibration.ignored", {
            **body.model_dump(), "reason": "the server measured this member's scale itself"})
        return Ack(audit_index=entry.index)
    services.state.set_calibration(caller.identity, {**body.model_dump(), "source": "self-reported"})
    entry = services.audit.record(caller.identity, "agent.calibrated", body.model_dump())
    return Ack(audit_index=entry.index)
