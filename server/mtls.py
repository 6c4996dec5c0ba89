"""uvicorn with mutual TLS where the app can see *who* is calling.

uvicorn verifies client certificates when told to, but it does not put the verified peer
certificate into the ASGI scope, and identity must come from that certificate, never from a
header. The protocol subclasses here read the DER certificate off the TLS transport once per
connection and expose it as the ASGI TLS extension (``scope["extensions"]["tls"]``), so
authorisation happens on the CA-issued URI SAN of a certificate the handshake verified.

Two HTTP/1.1 parsers, the same connection logic (:class:`_MutualTLS`): httptools (C, llhttp)
when it is installed — it is a dependency — and uvicorn's pure-Python h11 otherwise. Why
httptools: less server CPU per binary envelope at 8 and 32 connections (0.82-0.96x in one run,
``mor bench --sections 4 --compare-http``), none at 64 (1.00-1.05x); docs/benchmarks.md,
issue 14 §6, third pass.
``http=`` is pinned to these classes: uvicorn's own protocols would bypass them. ``loop=`` is
pinned to asyncio: the connection bounds (:mod:`server.connection_guard`) live in the listening
socket's ``accept``, which uvloop would bypass.

It also bounds an authenticated connection in time and size. uvicorn arms its keep-alive timer
only after a response, so a member that completes the handshake and never sends a request (or
sends half a request head) held its connection forever; here the same idle timeout also runs
from the handshake and from the first byte of every request head. h11 refuses a request head
over ``h11_max_incomplete_event_size`` (16 KiB); llhttp has no such bound, so the httptools
variant counts the bytes of an unfinished head and refuses past the same size.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.observability.logs import uvicorn_log_config

try:  # a dependency; h11 stays the fallback where the wheel is missing
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is installed wherever pyproject is
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

TLS_EXTENSION = "tls"
MAX_HEAD_BYTES = 16 * 1024  # h11's default bound on an unfinished request head, kept for httptools


def _peer_der(transport: asyncio.BaseTransport) -> bytes | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None


class _MutualTLS:
    """What both parsers' protocols add to uvicorn's: peer certificate, gate report, head/idle timers.

    A mixin over uvicorn's ``H11Protocol`` or ``HttpToolsProtocol`` (both keep ``cycle``,
    ``loop``, ``transport``, ``app``, ``config`` and the keep-alive timer under the same names).
    """

    config: Any
    app: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    timeout_keep_alive: Any
    timeout_keep_alive_task: asyncio.TimerHandle | None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        gate = getattr(self.config, "connection_gate", None)
        sock = transport.get_extra_info("socket")
        if gate is not None and sock is not None:
            gate.established(sock.fileno())
        self._head_timer: asyncio.TimerHandle | None = None
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                            self.timeout_keep_alive_handler)  # type: ignore[attr-defined]
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
        super().data_received(data)  # type: ignore[misc]
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
        super().connection_lost(exc)  # type: ignore[misc]

    def shutdown(self) -> None:
        """Abort idle keep-alive connections at shutdown instead of closing them politely.

        Why: a polite TLS close waits for the peer's close_notify, which an idle pooled client
        never sends, so uvicorn sat out its whole graceful timeout (~5 s) per stop. With no
        request in flight nothing can be lost by aborting; a request in flight still finishes.
        """
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()  # type: ignore[misc]


class H11MutualTLSProtocol(_MutualTLS, H11Protocol):
    """h11 (pure Python) protocol that hands the verified client certificate to the app on every request."""


if HttpToolsProtocol is not None:

    class HttpToolsMutualTLSProtocol(_MutualTLS, HttpToolsProtocol):
        """httptools (llhttp, C) protocol: the same as :class:`H11MutualTLSProtocol`, plus h11's head-size bound."""

        _head_bytes = 0
        _in_head = False

        def on_message_begin(self) -> None:
            self._in_head = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._in_head:
                self._head_bytes = 0
                return
            # this chunk ended inside a request head: its bytes count (at most one chunk too many)
            self._head_bytes += len(data)
            limit = getattr(self.config, "h11_max_incomplete_event_size", None) or MAX_HEAD_BYTES
            if self._head_bytes > limit and not self.transport.is_closing():
                self.send_400_response("Request head too large.")

    HTTP_PROTOCOLS: dict[str, type[_MutualTLS]] = {"httptools": HttpToolsMutualTLSProtocol,
                                                   "h11": H11MutualTLSProtocol}
else:  # pragma: no cover
    HTTP_PROTOCOLS = {"h11": H11MutualTLSProtocol}

DEFAULT_HTTP = "httptools" if "httptools" in HTTP_PROTOCOLS else "h11"
MutualTLSProtocol = HTTP_PROTOCOLS[DEFAULT_HTTP]  # what the server serves with


def protocol_class(http: str = "auto") -> type[_MutualTLS]:
    """The mutual-TLS protocol for ``http`` ("auto": httptools where installed, else h11); ValueError if unknown."""
    name = DEFAULT_HTTP if http == "auto" else http
    if name not in HTTP_PROTOCOLS:
        raise ValueError(f"unknown or unavailable HTTP implementation {http!r} (available: {sorted(HTTP_PROTOCOLS)})")
    return HTTP_PROTOCOLS[name]


def use_http(config: uvicorn.Config, http: str) -> None:
    """Serve *new* connections of a running server with ``http`` (the benchmark's h11/httptools A/B)."""
    config.http_protocol_class = protocol_class(http)  # type: ignore[assignment]


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
    gate: Any = None, http: str = "auto", **kwargs: Any
) -> uvicorn.Config:
    """A uvicorn ``Config`` serving ``app`` over the given (mutual) TLS context (``gate``: a ConnectionGate)."""
    if ssl_context.verify_mode != ssl.CERT_REQUIRED:
        raise ValueError("refusing to serve: the TLS context does not require client certificates")
    kwargs.setdefault("log_config", uvicorn_log_config())  # JSON logs: no handlers of uvicorn's own
    config = GuardedConfig(
        app,
        host=host,
        port=port,
        http=protocol_class(http),  # type: ignore[arg-type]
        loop="asyncio",
        ssl_context_factory=lambda _config, _default: ssl_context,
        log_level=log_level,
        **kwargs,
    )
    config.connection_gate = gate
    return config
