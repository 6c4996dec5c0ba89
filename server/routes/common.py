"""Dependencies shared by the route modules: the services bundle and the admitted caller."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from server.admission import Caller, require_role
from server.gate import caller_of
from server.rejections import Rejection
from server.services import Services

TOUCH_EVERY_S = 5.0  # last-seen only feeds the online window (minutes): a durable write per request cost a fsync each


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def any_caller(request: Request) -> Caller:
    """The certificate-authenticated caller (the gate admitted it; any role)."""
    caller = caller_of(request.scope)
    if caller is None:  # only reachable if the app runs without its gate
        raise Rejection(401, "no_client_certificate", "a client certificate from the consortium CA is required")
    return caller


def client_caller(request: Request) -> Caller:
    """A caller with a ``client`` certificate (enrolled or not)."""
    caller = any_caller(request)
    require_role(caller, "client")
    return caller


def _only(request: Request, role: str) -> Caller:
    """The caller if its certificate has ``role``; else 403 ``<role>_only``."""
    caller = any_caller(request)
    if caller.role != role:
        raise Rejection(403, f"{role}_only", f"{caller.identity} has role {caller.role!r}; this endpoint is for "
                                             f"{role!r} certificates only")
    return caller


def auditor_caller(request: Request) -> Caller:
    """A caller with an ``auditor`` certificate: the whole log and every member's report are theirs only."""
    return _only(request, "auditor")


def trainer_caller(request: Request) -> Caller:
    """A caller with a ``trainer`` certificate: only the trainer opens GRPO rounds and reads fused rewards."""
    return _only(request, "trainer")


def enrolled_agent(request: Request) -> tuple[Caller, dict[str, Any]]:
    """A ``client`` caller that has enrolled; refreshes its last-seen time (at most every ``TOUCH_EVERY_S``)."""
    caller = client_caller(request)
    services = services_of(request)
    agent = services.state.agent(caller.identity)
    if agent is None:
        raise Rejection(403, "not_enrolled", f"{caller.identity} has not enrolled: POST /v1/enrol first")
    now = services.clock()
    if agent["last_seen"] is None or not 0.0 <= now - agent["last_seen"] < TOUCH_EVERY_S:
        services.state.touch_agent(caller.identity, now)
    return caller, agent
