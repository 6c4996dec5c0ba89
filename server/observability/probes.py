"""The probe listener: plain HTTP ``/livez``, ``/readyz`` and ``/metrics``, nothing else, no client certificate.

Why it is safe to leave unauthenticated (the argument in full: ``deploy/RUNBOOK.md``, "Probes
and metrics"): it serves three fixed paths whose replies hold no member data, it accepts no
input (no body, no query is read), it has its own socket, event loop and thread — so a flood
of it cannot touch the mTLS port's connection bounds — and it binds to loopback unless
``[observability].probe_host`` says otherwise. Anything else is 404/405.

* ``/livez`` -> 200 while the process runs and its API thread is alive (503 once it died):
  "restart me" and nothing more.
* ``/readyz`` -> 200 only when every check of :mod:`server.observability.readiness` passes
  and the API is serving; else 503 naming the failing checks; what is wrong, in full, goes to
  the party's log (paths and database errors are not for whoever reaches the port). Both
  answer JSON.
* ``/metrics`` -> the party's :class:`~server.observability.metrics.PartyMetrics` registry.

Slow and idle clients: uvicorn bounds the listener at :data:`MAX_CONNECTIONS` and answers
503 past it, but by itself puts no deadline on a connection that never finishes its request —
32 silent sockets held ``/livez`` at 503 for as long as they stayed open, and a kubelet
restarts a server whose liveness fails. So every connection must finish a request within
:data:`REQUEST_DEADLINE_S` of opening (one still being answered then gets another), and one peer holds at most
:data:`MAX_CONNECTIONS_PER_PEER` of the slots (:func:`_bounded_protocol`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.errors import ServerError
from server.observability.logs import uvicorn_log_config
from server.observability.readiness import Check, run_checks

log = logging.getLogger("mor.observability")
MAX_CONNECTIONS = 32  # a probe listener needs a handful; past this uvicorn answers 503 at once
MAX_CONNECTIONS_PER_PEER = 8  # a kubelet or Prometheus needs one or two; the rest stay for them
REQUEST_DEADLINE_S = 5.0  # a probe request is a few hundred bytes: a connection idle this long is closed
FAILING = "failing (the reason is in the party's log)"


def _bounded_protocol() -> type[H11Protocol]:
    """uvicorn's h11 protocol with a per-connection request deadline and a per-peer connection bound.

    One class per listener, so its per-peer counts are its own. A connection is closed when
    the deadline passes while no request of it is being answered (a half-sent request, or an
    idle keep-alive); one being answered gets another deadline.
    """
    per_peer: Counter[str] = Counter()

    class BoundedH11Protocol(H11Protocol):
        _peer = ""
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else ""
            per_peer[self._peer] += 1
            if per_peer[self._peer] > MAX_CONNECTIONS_PER_PEER:
                transport.close()
                return
            self._deadline = self.loop.call_later(REQUEST_DEADLINE_S, self._expire)

        def connection_lost(self, exc: Exception | None) -> None:
            per_peer[self._peer] -= 1
            if per_peer[self._peer] <= 0:
                del per_peer[self._peer]
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _expire(self) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                self._deadline = self.loop.call_later(REQUEST_DEADLINE_S, self._expire)
                return
            self.transport.close()

    return BoundedH11Protocol


class ProbeListener:
    """``/livez``, ``/readyz``, ``/metrics`` on their own socket and thread; ``stop()`` at shutdown."""

    def __init__(self, *, host: str, port: int, registry: CollectorRegistry, checks: dict[str, Check],
                 name: str) -> None:
        self.host, self.port, self.registry, self.name = host, port, registry, name
        self.checks = {**checks, "api": lambda: "the API listener has not started yet"}
        self._api_alive: Callable[[], bool] = lambda: True
        self._last_problems: dict[str, str | None] = {}
        app = Starlette(routes=[Route("/livez", self._livez), Route("/readyz", self._readyz),
                                Route("/metrics", self._metrics)])
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, http=_bounded_protocol(), loop="asyncio", lifespan="off", access_log=False,
            log_level="warning", log_config=uvicorn_log_config(), limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=5))
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name=f"{name}-probes", daemon=True)

    def serving(self, api_alive: Callable[[], bool]) -> None:
        """The API listener is up: readiness and liveness follow ``api_alive`` from now on."""
        self._api_alive = api_alive
        self.checks["api"] = lambda: None if api_alive() else "the API listener stopped"

    async def _livez(self, _request: Request) -> JSONResponse:
        alive = self._api_alive()
        return JSONResponse({"alive": alive}, status_code=200 if alive else 503)

    async def _readyz(self, _request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        results = await run_in_threadpool(run_checks, self.checks)
        ready = all(problem is None for problem in results.values())
        self._log_changes(results)
        body = {"ready": ready, "checks": {name: "ok" if problem is None else FAILING
                                           for name, problem in results.items()}}
        return JSONResponse(body, status_code=200 if ready else 503)

    def _log_changes(self, results: dict[str, str | None]) -> None:
        """Each check's problem in full goes to the party's log once when it appears, and its end once.

        Not in the reply: the listener answers anyone who can reach it, and a problem's text names
        paths, key files and the database driver's error (host, user) — the operator reads it here.
        """
        for name, problem in results.items():
            if problem != self._last_problems.get(name):
                if problem is None:
                    log.warning("%s: readiness check %s ok again", self.name, name)
                else:
                    log.warning("%s: readiness check %s failing: %s", self.name, name, problem)
                self._last_problems[name] = problem

    async def _metrics(self, _request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        return Response(await run_in_threadpool(generate_latest, self.registry), media_type=CONTENT_TYPE_LATEST)

    def _serve(self) -> None:
        self.server.run(sockets=[self._socket] if self._socket else None)

    def start(self, timeout: float = 10.0) -> ProbeListener:
        """Bind (ServerError naming the address if it cannot) and serve in a daemon thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ServerError(f"{self.name}: cannot listen for probes on {self.host}:{self.port}: "
                              f"{exc.strerror or exc}") from None
        sock.listen(MAX_CONNECTIONS)
        self._socket = sock
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServerError(f"{self.name}: the probe listener on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        log.warning("%s: probes and metrics on http://%s:%d (/livez /readyz /metrics; no client certificate, no "
                    "member data)", self.name, self.host, self.port)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(5)
        elif self._socket is not None:
            self._socket.close()
