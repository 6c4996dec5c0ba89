"""The ASGI gate in front of every route: who is calling, may they, and is the body too big.

Runs before FastAPI parses anything, so an oversized body is refused (413) from its declared
length or after at most ``max_body_bytes`` have been read — never buffered whole. The
admitted :class:`~server.admission.Caller` (``caller``), the identified peer even when it was
refused (``peer``: revoked, rate-limited... refusals are recorded under its identity) and the
body are left in ``scope["state"]`` for the routes and the rejection audit entries (which record
the body's SHA-256: :func:`body_sha256_of`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from server.admission import AdmissionControl, Caller
from server.mtls import peer_certificate_der
from server.rejections import Rejection

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RejectFn = Callable[[Scope, Send, Rejection], Awaitable[None]]

UNAUTHENTICATED = "unauthenticated"


def caller_of(scope: Scope) -> Caller | None:
    return (scope.get("state") or {}).get("caller")


def actor_of(scope: Scope) -> str:
    """Who to record: the certificate's identity — also when admission refused it — or ``unauthenticated``."""
    peer = (scope.get("state") or {}).get("peer")
    return peer.identity if isinstance(peer, Caller) else UNAUTHENTICATED


def body_sha256_of(scope: Scope) -> str | None:
    """SHA-256 of the request body, for a rejection's audit entry; computed on first use.

    Why lazily: only refused requests record it, and hashing every accepted 332 KB envelope
    body cost ~0.25 ms of server CPU each (issue 14 §6).
    """
    state = scope.get("state") or {}
    if "body_sha256" not in state:
        body = state.get("body")
        state["body_sha256"] = hashlib.sha256(body).hexdigest() if body else None
    return state["body_sha256"]


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise Rejection(400, "bad_content_length", "Content-Length is not an integer") from None
            if declared > limit:
                raise Rejection(413, "body_too_large", f"request body of {declared} bytes exceeds the policy "
                                                       f"limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Rejection(400, "client_disconnected", "client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Rejection(413, "body_too_large", f"request body exceeds the policy limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class Gate:
    """Pure ASGI middleware: admission + body limit, rejections answered by ``reject``."""

    def __init__(self, app: ASGIApp, *, admission: AdmissionControl, max_body_bytes: int, reject: RejectFn) -> None:
        self.app = app
        self.admission = admission
        self.max_body_bytes = max_body_bytes
        self.reject = reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            peer = state["peer"] = self.admission.identify(peer_certificate_der(dict(scope)))
            self.admission.check(peer)
            state["caller"] = peer
            body = await _read_body(scope, receive, self.max_body_bytes)
        except Rejection as rejection:
            await self.reject(scope, send, rejection)
            return
        state["body"] = body  # its SHA-256 only if a rejection records it (body_sha256_of)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
