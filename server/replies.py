"""Turning refusals into replies: one ``ErrorBody`` + one audit entry per refusal.

Shared by the aggregation server and the key holder so both answer bad input the same way:
gate refusals, route :class:`~server.rejections.Rejection`, validation errors (422 with
field paths), unknown routes (404/405) and bugs (opaque 500, logged with its traceback).
What an entry keeps of the request (path, field paths, message) is bounded, so every refusal
fits the audit log's entry limit and is recorded — a refusal that is not audited is a gap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.gate import RejectFn, Scope, Send, actor_of, body_sha256_of
from server.rejections import Rejection, bounded_text
from wire.messages import ErrorBody

log = logging.getLogger("mor.server")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
RecordFn = Callable[[str, str, Mapping[str, Any]], object]
MAX_PATH_CHARS = 512  # what a refusal's audit entry keeps of the request path
MAX_FIELD_PART_CHARS = 64  # of each part of a field path (a field path may name a hostile key)


def error_response(rejection: Rejection) -> JSONResponse:
    body = ErrorBody(code=rejection.code, message=rejection.message).model_dump()
    headers = {"Retry-After": "1"} if rejection.status == 429 else None
    return JSONResponse(body, status_code=rejection.status, headers=headers)


def _field_path(error: Mapping[str, Any]) -> str:
    return ".".join(bounded_text(str(part), MAX_FIELD_PART_CHARS) for part in error.get("loc", ())) or "body"


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def install_rejection_handling(app: FastAPI, record: RecordFn) -> RejectFn:
    """Install the exception handlers on ``app``; returns the gate's reject function."""

    def audit(scope: Scope, rejection: Rejection) -> None:
        try:
            record(actor_of(scope), f"reject.{rejection.code}", {
                "status": rejection.status, "method": bounded_text(str(scope.get("method")), 16),
                "path": bounded_text(str(scope.get("path", "")), MAX_PATH_CHARS),
                "body_sha256": body_sha256_of(scope), "message": rejection.message,
            })
        except Exception:  # noqa: BLE001 - a failing audit write must not turn a 4xx into a 500
            log.exception("could not audit rejection %r", rejection)

    async def reject_at_gate(scope: Scope, send: Send, rejection: Rejection) -> None:
        audit(scope, rejection)
        await error_response(rejection)(dict(scope), _no_receive, send)

    @app.exception_handler(Rejection)
    async def on_rejection(request: Request, exc: Rejection) -> JSONResponse:
        audit(request.scope, exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{_field_path(e)}: {e.get('msg')}" for e in exc.errors()[:20])
        return await on_rejection(request, Rejection(422, "validation_error", details or "does not match the schema"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        status_code = exc.status_code if 400 <= exc.status_code <= 599 else 400
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return await on_rejection(request, Rejection(status_code, code, message))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return await on_rejection(request, Rejection(500, "internal_error", "internal server error (logged)"))

    return reject_at_gate
