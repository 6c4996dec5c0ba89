"""The plain-HTTP probe listener against silent clients: they cannot hold ``/livez`` at 503.

Before the bound, 32 connections that never finished a request filled uvicorn's concurrency
limit and every later probe got 503 for as long as they stayed open — a kubelet restarts a
server whose liveness probe fails. Now one peer holds at most 8 connections (the rest are
closed at once) and a connection that has not finished a request by the deadline is closed, so
liveness answers 200 again right after. A real listener on loopback; the deadline is shortened.
"""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry

from server.observability import probes
from server.observability.probes import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER, ProbeListener


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_connections_are_bounded_per_peer_and_closed_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "REQUEST_DEADLINE_S", 1.0)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    listener = ProbeListener(host="127.0.0.1", port=port, registry=CollectorRegistry(), checks={}, name="t").start()
    listener.serving(lambda: True)
    silent = []
    try:
        for _ in range(MAX_CONNECTIONS + 4):  # a half-sent request on each, never finished
            conn = socket.create_connection(("127.0.0.1", port))
            conn.sendall(b"GET /livez HTTP/1.1\r\nHost: probe\r\n")
            silent.append(conn)
        over = [_closed_by_server(c, 0.3) for c in silent[MAX_CONNECTIONS_PER_PEER:]]
        assert all(over), f"{over.count(False)} connections past the per-peer bound were kept"
        assert all(_closed_by_server(c, 3.0) for c in silent[:MAX_CONNECTIONS_PER_PEER])
        reply = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=3)
        assert (reply.status_code, reply.json()) == (200, {"alive": True})
    finally:
        for conn in silent:
            conn.close()
        listener.stop()
