"""The aggregation server's HTTP API: :func:`create_app` builds it around a :class:`Services`.

Request path: uvicorn (mutual TLS 1.3, consortium CA, CRL) -> :class:`~server.gate.Gate`
(identity from the verified certificate, live CRL, admission policy, rate limit, body limit)
-> FastAPI routes (pydantic-typed, ``/v1``) -> :class:`~server.state.StateStore` + audit log.

Every refusal — from the gate, a route, validation or routing — is answered with a
``wire.messages.ErrorBody`` and recorded as an audit entry ``reject.<code>`` (actor = the
certificate identity or ``unauthenticated``, with the body's SHA-256, never its content);
see :mod:`server.replies`.
"""

from __future__ import annotations

from fastapi import FastAPI

from server.gate import Gate
from server.replies import install_rejection_handling
from server.routes import audit_routes, auditor, enrol, keys, status, submissions, tasks, trainer
from server.services import Services
from wire.messages import API_VERSION


def create_app(services: Services) -> FastAPI:
    """The FastAPI app (OpenAPI at ``/v1/openapi.json``), wrapped in the admission gate."""
    app = FastAPI(
        title="MoR-Secure aggregation server", version=API_VERSION,
        openapi_url=f"/{API_VERSION}/openapi.json", docs_url=None, redoc_url=None,
    )
    app.state.services = services
    reject = install_rejection_handling(app, services.audit.record)
    for module in (enrol, keys, tasks, submissions, audit_routes, auditor, status, trainer):
        app.include_router(module.router)
    app.add_middleware(Gate, admission=services.admission, max_body_bytes=services.policy.max_body_bytes,
                       reject=reject)
    return app
