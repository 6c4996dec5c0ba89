"""The probe listener: plain HTTP ``/livez``, ``/readyz`` and ``/metrics``, nothing else, no client certificate.

Why it is safe to leave unauthenticated (the argument in full: ``deploy/RUNBOOK.md``, "Probes
and metrics"): it serves three fixed paths whose replies hold no member data, it accepts no
input (no body, no query is read), it has its own socket, event loop and thread — so a flood
of it cannot touch the mTLS port's connection bounds — and it binds to loopback unless
``[observability].probe_host`` says otherwise. Anything else is 404/405.

* ``/livez`` -> 200 while the process runs and its API thread is alive (503 once it died):
  "restart me" and nothing more.
* ``/readyz`` -> 200 only when every check of :mod:`server.observability.readiness` passes
  and the API is serving; else 503 with each check's problem. Both answer JSON.
* ``/metrics`` -> the party's :class:`~server.observability.metrics.PartyMetrics` registry.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.errors import ServerError
from server.observability.logs import uvicorn_log_config
from server.observability.readiness import Check, run_checks

log = logging.getLogger("mor.observability")
MAX_CONNECTIONS = 32  # a probe listener needs a handful; past this uvicorn answers 503 at once


class ProbeListener:
    """``/livez``, ``/readyz``, ``/metrics`` on their own socket and thread; ``stop()`` at shutdown."""

    def __init__(self, *, host: str, port: int, registry: CollectorRegistry, checks: dict[str, Check],
                 name: str) -> None:
        self.host, self.port, self.registry, self.name = host, port, registry, name
        self.checks = {**checks, "api": lambda: "the API listener has not started yet"}
        self._api_alive: Callable[[], bool] = lambda: True
        app = Starlette(routes=[Route("/livez", self._livez), Route("/readyz", self._readyz),
                                Route("/metrics", self._metrics)])
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, http="h11", loop="asyncio", lifespan="off", access_log=False,
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
        body = {"ready": ready, "checks": {name: problem or "ok" for name, problem in results.items()}}
        return JSONResponse(body, status_code=200 if ready else 503)

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
