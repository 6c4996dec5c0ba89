"""A rejection's audit entry still records the SHA-256 of the refused body, now computed only when needed.

Why: the gate used to hash every body on arrival (~0.25 ms per 332 KB envelope, issue 14 §6)
although only refused requests record the digest. :func:`server.gate.body_sha256_of` now
computes it from the body the gate left in the request state, once.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from server.gate import Gate, body_sha256_of


class _Admission:
    def identify(self, der: bytes | None) -> str:
        return "alice"

    def check(self, caller: str) -> None:
        pass


def _run_gate(body: bytes) -> tuple[dict[str, Any], bytes]:
    """The real Gate over one request whose body arrives in two chunks; the scope and what the app read."""
    chunks = [{"type": "http.request", "body": body[:7], "more_body": True},
              {"type": "http.request", "body": body[7:], "more_body": False}]
    scope: dict[str, Any] = {"type": "http", "headers": [(b"content-length", str(len(body)).encode())]}
    read: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        read.append((await receive())["body"])

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def nothing(*_: Any) -> None:
        raise AssertionError("not refused")

    gate = Gate(app, admission=_Admission(), max_body_bytes=1 << 20, reject=nothing)  # type: ignore[arg-type]
    asyncio.run(gate(scope, receive, nothing))
    return scope, read[0]


def test_a_refused_body_is_recorded_by_its_sha256_computed_once() -> None:
    body = b"not an envelope, refused after the gate" * 100
    scope, read = _run_gate(body)
    assert read == body
    assert "body_sha256" not in scope["state"]  # nothing hashed for a request that is not refused
    digest = body_sha256_of(scope)
    assert digest == hashlib.sha256(body).hexdigest()
    scope["state"]["body"] = b"changed"
    assert body_sha256_of(scope) == digest  # computed once per request


def test_no_body_records_none() -> None:
    assert body_sha256_of({"state": {"body": b""}}) is None
    assert body_sha256_of({}) is None
