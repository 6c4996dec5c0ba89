"""Both HTTP parsers the server can serve with (:mod:`server.mtls`) keep the same security properties.

Why: the server serves with httptools (C) where it is installed and falls back to h11 (pure
Python); the identity of a request, the connection gate's bookkeeping and the bounds on an
authenticated connection (idle timeout, a request head that never ends, a request head too
large) must not depend on which one runs. Each test runs against both, over real mutual TLS on
loopback through the guarded listening socket, as ``mor server serve`` does.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from helpers.pki import Party, TestPKI, make_pki
from helpers.procs import free_port

from crypto.tls import server_ssl_context
from server.config import ConnectionLimits
from server.connection_guard import ConnectionGate, listen
from server.mtls import (
    HTTP_PROTOCOLS,
    MAX_HEAD_BYTES,
    H11MutualTLSProtocol,
    MutualTLSProtocol,
    peer_certificate_der,
    protocol_class,
    uvicorn_config,
)

pytestmark = pytest.mark.timeout(60)
IDLE_S = 1.0
PARSERS = ("h11", "httptools")


class Served:
    def __init__(self, pki: TestPKI, member: Party, gate: ConnectionGate, port: int, seen: list[dict[str, Any]]):
        self.pki, self.member, self.gate, self.port, self.seen = pki, member, gate, port, seen
        self.url = f"https://127.0.0.1:{port}"


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the SHA-256 of the body; records the peer certificate and the body size it saw."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    scope_seen = {"der": peer_certificate_der(scope), "size": len(body)}
    _echo.seen.append(scope_seen)  # type: ignore[attr-defined]
    reply = hashlib.sha256(body).hexdigest().encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(reply)).encode())]})
    await send({"type": "http.response.body", "body": reply})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPKI, Party]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    return pki, pki.issue("alice")


@pytest.fixture(params=PARSERS)
def served(request: pytest.FixtureRequest, pki: tuple[TestPKI, Party]) -> Iterator[Served]:
    """A real uvicorn with ``request.param`` as its parser, behind the connection gate, in a thread."""
    authority, member = pki
    server_party = authority.server
    context = server_ssl_context(server_party.cert, server_party.key, authority.ca_cert, authority.crl)
    gate = ConnectionGate(ConnectionLimits(idle_timeout_s=IDLE_S, handshake_timeout_s=5.0))
    port = free_port()
    listener = listen("127.0.0.1", port, gate)
    seen: list[dict[str, Any]] = []
    _echo.seen = seen  # type: ignore[attr-defined]
    server = uvicorn.Server(uvicorn_config(_echo, host="127.0.0.1", port=port, ssl_context=context, gate=gate,
                                           http=request.param, timeout_keep_alive=IDLE_S))
    thread = threading.Thread(target=lambda: server.run([listener]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield Served(authority, member, gate, port, seen)
    finally:
        server.should_exit = True
        thread.join(10)


def _authenticated(served: Served) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    return served.member.client_context().wrap_socket(raw, server_hostname="127.0.0.1")


def _seconds_until_closed(tls: ssl.SSLSocket) -> tuple[float, bytes]:
    started, received = time.monotonic(), b""
    try:
        while chunk := tls.recv(4096):
            received += chunk
    except (ssl.SSLError, OSError):
        pass
    return time.monotonic() - started, received


def test_auto_is_httptools_and_an_unknown_parser_is_refused() -> None:
    assert set(HTTP_PROTOCOLS) == set(PARSERS)
    assert protocol_class() is MutualTLSProtocol is HTTP_PROTOCOLS["httptools"]
    assert protocol_class("h11") is H11MutualTLSProtocol
    with pytest.raises(ValueError, match="unknown or unavailable"):
        protocol_class("uvloop")


def test_the_app_sees_the_verified_certificate_and_a_whole_binary_body(served: Served) -> None:
    body = bytes(range(256)) * 1300  # 332,800 bytes: one ckks envelope's size, many TLS records
    with httpx.Client(verify=served.member.client_context(), timeout=10.0) as client:
        replies = [client.post(f"{served.url}/v1/submissions/binary", content=body,
                               headers={"content-type": "application/octet-stream"}) for _ in range(3)]
    assert [r.status_code for r in replies] == [200] * 3
    assert {r.text for r in replies} == {hashlib.sha256(body).hexdigest()}
    member_der = x509.load_pem_x509_certificate(Path(served.member.cert).read_bytes()).public_bytes(Encoding.DER)
    assert served.seen == [{"der": member_der, "size": len(body)}] * 3  # one keep-alive connection, 3 requests
    assert served.gate.handshaking == 0 and served.gate.stats["accepted"] >= 1  # the handshake was reported


def test_idle_and_half_sent_heads_are_closed_after_the_idle_timeout(served: Served) -> None:
    with _authenticated(served) as silent, _authenticated(served) as slow:
        slow.sendall(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a request head that never ends
        silent_for, _ = _seconds_until_closed(silent)
        slow_for, _ = _seconds_until_closed(slow)
    assert IDLE_S - 0.5 <= silent_for <= IDLE_S + 2.0
    assert silent_for + slow_for <= IDLE_S + 2.0
    assert served.seen == []


def test_a_request_head_over_the_bound_is_refused_and_one_within_it_served(served: Served) -> None:
    filler = b"x" * 1000
    fits = b"GET /fits HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        b"X-Pad-%d: %s\r\n" % (i, filler) for i in range(MAX_HEAD_BYTES // 2048)) + b"\r\n"
    with _authenticated(served) as tls:
        tls.sendall(fits)
        assert tls.recv(4096).startswith(b"HTTP/1.1 200")
    with _authenticated(served) as tls:
        tls.sendall(b"GET /huge HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:  # trickled, so no single read holds the whole head; the server closes mid-way
            for i in range(4 * MAX_HEAD_BYTES // len(filler)):
                tls.sendall(b"X-Pad-%d: %s\r\n" % (i, filler))
                time.sleep(0.002)
        except (ssl.SSLError, OSError):
            pass
        closed_after, answer = _seconds_until_closed(tls)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert closed_after < IDLE_S  # refused for its size, not its silence
    assert len(served.seen) == 1  # only the head within the bound reached the app
