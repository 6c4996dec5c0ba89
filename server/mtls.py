"""uvicorn with mutual TLS where the app can see *who* is calling.

uvicorn verifies client certificates when told to, but it does not put the verified peer
certificate into the ASGI scope, and identity must come from that certificate, never from a
header. This protocol subclass reads the DER certificate off the TLS transport once per
connection and exposes it as the ASGI TLS extension (``scope["extensions"]["tls"]``), so
authorisation happens on the CA-issued URI SAN of a certificate the handshake verified.

``http=`` is pinned to this class: the httptools protocol would bypass it. ``loop=`` is pinned
to asyncio: the connection bounds (:mod:`server.connection_guard`) live in the listening
socket's ``accept``, which uvloop would bypass.

It also bounds an authenticated connection in time. uvicorn arms its keep-alive timer only
after a response, so a member that completes the handshake and never sends a request (or
sends half a request head) held its connection forever; here the same idle timeout also runs
from the handshake and from the first byte of every request head.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.observability.logs import uvicorn_log_config

TLS_EXTENSION = "tls"


def _peer_der(transport: asyncio.BaseTransport) -> bytes | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None


class MutualTLSProtocol(H11Protocol):
    """h11 protocol that hands the verified client certificate to the app on every request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        gate = getattr(self.config, "connection_gate", None)
        sock = transport.get_extra_info("socket")
        if gate is not None and sock is not None:
            gate.established(sock.fileno())
        self._head_timer: asyncio.TimerHandle | None = None
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        der = _peer_der(transport)
        inner = self.app

        async def app_with_peer(scope: Any, receive: Any, send: Any) -> None:
            extensions = dict(scope.get("extensions") or {})
            extensions[TLS_EXTENSION] = {"client_cert_der": der}
            scope["extensions"] = extensions
            await inner(scope, receive, send)

        self.app = app_with_peer

    def data_received(self, data: bytes) -> None:
        """As uvicorn, plus a deadline for a request head that arrives byte by byte (slowloris)."""
        super().data_received(data)
        waiting_for_head = self.cycle is None or self.cycle.response_complete
        if waiting_for_head and self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout, self.cycle)

    def _head_timeout(self, cycle_when_armed: Any) -> None:
        self._head_timer = None
        if self.cycle is cycle_when_armed and not self.transport.is_closing():  # still no new request
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """Abort idle keep-alive connections at shutdown instead of closing them politely.

        Why: a polite TLS close waits for the peer's close_notify, which an idle pooled client
        never sends, so uvicorn sat out its whole graceful timeout (~5 s) per stop. With no
        request in flight nothing can be lost by aborting; a request in flight still finishes.
        """
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()


def peer_certificate_der(scope: dict[str, Any]) -> bytes | None:
    """The verified client certificate of this request, or None (plain HTTP / no cert)."""
    tls = (scope.get("extensions") or {}).get(TLS_EXTENSION) or {}
    der = tls.get("client_cert_der")
    return bytes(der) if der else None


class GuardedConfig(uvicorn.Config):
    """uvicorn's config plus the connection gate the protocol reports completed handshakes to."""

    connection_gate: Any = None


def uvicorn_config(
    app: Any, *, host: str, port: int, ssl_context: ssl.SSLContext, log_level: str = "warning",
    gate: Any = None, **kwargs: Any
) -> uvicorn.Config:
    """A uvicorn ``Config`` serving ``app`` over the given (mutual) TLS context (``gate``: a ConnectionGate)."""
    if ssl_context.verify_mode != ssl.CERT_REQUIRED:
        raise ValueError("refusing to serve: the TLS context does not require client certificates")
    kwargs.setdefault("log_config", uvicorn_log_config())  # JSON logs: no handlers of uvicorn's own
    config = GuardedConfig(
        app,
        host=host,
        port=port,
        http=MutualTLSProtocol,
        loop="asyncio",
        ssl_context_factory=lambda _config, _default: ssl_context,
        log_level=log_level,
        **kwargs,
    )
    config.connection_gate = gate
    return config
