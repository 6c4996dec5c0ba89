"""``GET /v1/status`` (JSON), ``GET /status`` (a small HTML page) and ``GET /v1/status/keys``.

``/v1/status/keys`` lets an auditor check key custody from outside the process: under
``fused-only`` the server must hold no CKKS secret key (``holds_secret_key`` is false and the
context it serves at ``/v1/context`` is public-only), under ``ckks`` it holds one and counts
its decryptions.

What a member's certificate sees of the status: the consortium-wide figures (rounds, audit
head, router, datasets, CRL) and **its own** row only — other members' ε, architecture,
activity and quarantine are theirs and the auditor's (``server.routes.auditor``). Auditors,
and the serving roles, see every member.
"""

from __future__ import annotations

import json
import math
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from server.admission import Caller
from server.mtls import peer_certificate_der
from server.routes.common import any_caller, services_of
from server.services import Services
from server.state_tables import rounds, submissions
from server.status_page import (
    DatasetView,
    MemberHealthView,
    RouterWeightsView,
    StatusSnapshot,
    render_status_page,
)
from server.status_progress import (
    TrainingProgressView,
    certificate_file_view,
    certificate_view,
    read_training_progress,
)
from wire.messages import AgentStatus

router = APIRouter(tags=["status"])


class KeyCustody(BaseModel):
    """Which CKKS key material this server process holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    privacy_mode: str
    holds_secret_key: bool
    context_sha256: str | None
    decryptions: int | None


def _lifetime_spent(row: dict[str, object]) -> float | None:
    """The composed lifetime ε from the member's stored, signed privacy report (None if it states none)."""
    try:
        value = json.loads(str(row.get("privacy_report") or "{}")).get("lifetime_epsilon")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _noise_source(row: dict[str, object]) -> str | None:
    """Where the member's DP noise came from, as its stored, signed privacy report states it (bounded text)."""
    try:
        value = json.loads(str(row.get("privacy_report") or "{}")).get("noise_source")
    except (ValueError, AttributeError):
        return None
    return value[:200] if isinstance(value, str) else None


def _shown(viewer: Caller | None, member: str) -> bool:
    return viewer is None or viewer.role != "client" or viewer.identity == member


def _training(services: Services) -> TrainingProgressView | None:
    """GRPO progress from the server's own audit log (only a file-backed log has one to read)."""
    directory = getattr(getattr(services.audit, "log", None), "directory", None)
    return read_training_progress(directory / "entries.jsonl") if directory is not None else None


def server_status(services: Services, viewer: Caller | None = None,
                  viewer_cert_der: bytes | None = None) -> StatusSnapshot:
    """Snapshot of rounds, agents, budgets, the audit head and the router in use (read-only).

    ``viewer``: a ``client`` caller sees only its own member row (see the module docstring);
    ``viewer_cert_der``: the certificate of the connection, so the page can say when it expires.
    """
    state, policy, now = services.state, services.policy, services.clock()
    with state.engine.connect() as conn:
        per_agent: dict[str, int] = dict(conn.execute(  # type: ignore[arg-type]
            select(submissions.c.agent, func.count()).group_by(submissions.c.agent)).all())
        current = conn.execute(select(rounds.c.round_id).where(rounds.c.status == "open")
                               .order_by(rounds.c.created_at.desc())).scalars().first()
    agents = [
        AgentStatus(agent=a["identity"], architecture=a["architecture"], epsilon=a["epsilon"], delta=a["delta"],
                    epsilon_budget=policy.max_epsilon, last_seen=a["last_seen"],
                    online=a["last_seen"] is not None and now - a["last_seen"] <= policy.online_window_s,
                    submissions=int(per_agent.get(a["identity"], 0)),
                    lifetime_epsilon=_lifetime_spent(a), lifetime_budget=policy.lifetime_epsilon,
                    noise_source=_noise_source(a))
        for a in state.list_agents() if _shown(viewer, a["identity"])
    ]
    counts = state.round_counts()
    head = services.audit.checkpoint()
    router = state.current_router_weights()
    crl = services.admission.revocations.health()
    return StatusSnapshot(
        consortium=policy.consortium, privacy_mode=policy.privacy_mode, policy_digest=policy.digest, agents=agents,
        rounds_completed=counts["fused"], rounds_collected=counts["collected"], rounds_skipped=counts["skipped"],
        current_round=current, audit_size=int(head["size"]), audit_root_sha256=str(head["root_sha256"]),
        router_weights=router["overall"] if router else {},
        router=RouterWeightsView(kind=router["kind"], digest=router["digest"], basis=router["basis"],
                                 updated_at=router["updated_at"], by_domain=router["by_domain"]) if router else None,
        datasets=[DatasetView(role=d["role"], source=d["source"], count=d["count"], sha256=d["sha256"],
                              domains=d["domains"], loaded_at=d["loaded_at"]) for d in state.list_datasets()],
        member_health=[MemberHealthView(agent=a, consecutive_failures=h["failures"],
                                        quarantined_until=h["quarantined_until"], reason=h["reason"])
                       for a, h in sorted(state.member_health().items()) if h["failures"] and _shown(viewer, a)],
        crl_next_update=crl.next_update.timestamp() if crl and crl.next_update else None,
        crl_warning=crl.warning if crl else "revocation list unusable: every connection is refused",
        as_of=now, insecure=list(services.policy.insecure_reasons), training=_training(services),
        your_certificate=certificate_view(viewer_cert_der, now),
        server_certificate=certificate_file_view(services.tls_cert, now),
    )


@router.get("/v1/status", response_model=StatusSnapshot, summary="Server status (JSON)")
def status_json(request: Request, caller: Annotated[Caller, Depends(any_caller)]) -> StatusSnapshot:
    return server_status(services_of(request), caller, peer_certificate_der(dict(request.scope)))


@router.get("/status", response_class=HTMLResponse, summary="Server status page (HTML)")
def status_html(request: Request, caller: Annotated[Caller, Depends(any_caller)]) -> HTMLResponse:
    der = peer_certificate_der(dict(request.scope))
    return HTMLResponse(render_status_page(server_status(services_of(request), caller, der)))


@router.get("/v1/status/keys", response_model=KeyCustody, summary="Which CKKS key material this server holds")
def key_custody(request: Request, _caller: Annotated[Caller, Depends(any_caller)]) -> KeyCustody:
    services = services_of(request)
    privacy = services.privacy
    context = privacy.public_context
    return KeyCustody(privacy_mode=services.policy.privacy_mode, holds_secret_key=privacy.holds_secret_key,
                      context_sha256=context.sha256 if context else None,
                      decryptions=privacy.decryptions)
