"""Start the consortium's services: ``mor server serve|run`` and ``mor keyholder serve``, or the server in-process.

As processes (:func:`start_server`, :func:`start_keyholder`): exactly the command an operator
runs, on the port its config names, returned once the port accepts connections. A process
that exits during start-up fails with its log.

In this process (:class:`InProcessServer`): the same wiring ``mor server run`` uses — one
:func:`server.wiring.open_server` runtime, the HTTP API on a :class:`server.runner.ServiceThread`
— so a caller that plays the server's training side (a :class:`~server.rounds.RoundCoordinator`,
as the bench does) uses the server's own state store and audit log, in the server's process,
as the trainer does. Why not a coordinator in a second process on the server's SQLite file:
that is not how the server runs, its rounds would be audited in a log of their own, and two
writers would share one database behind the server's back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from sim.harness.configs import config_port
from sim.harness.processes import LOOPBACK, START_TIMEOUT_S, ManagedProcess, start_mor, wait_listening


def start_server(config: Path, *, training: Path | None = None, keep_serving: bool = False, log: Path | None = None,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None, name: str = "server",
                 timeout: float = START_TIMEOUT_S) -> ManagedProcess:
    """``mor server serve`` (or ``run`` with ``training``), waited for until its API port listens."""
    config = Path(config)
    args = ["server", "serve", "--config", str(config)] if training is None else \
        ["server", "run", "--config", str(config), "--training", str(training)]
    if keep_serving:
        args.append("--keep-serving")
    default_log = config.with_suffix(".log" if training is None else ".run.log")
    process = start_mor(name, args, log=log or default_log, env=env, cwd=cwd, port=config_port(config, "server"))
    return wait_listening(process, timeout)


def start_keyholder(config: Path, *, log: Path | None = None, env: Mapping[str, str] | None = None,
                    cwd: Path | None = None, name: str = "keyholder", timeout: float = START_TIMEOUT_S
                    ) -> ManagedProcess:
    """``mor keyholder serve``, waited for until its port listens."""
    config = Path(config)
    process = start_mor(name, ["keyholder", "serve", "--config", str(config)], log=log or config.with_suffix(".log"),
                        env=env, cwd=cwd, port=config_port(config, "keyholder"))
    return wait_listening(process, timeout)


class InProcessServer:
    """The server's API over mutual TLS in a thread of this process; ``services`` are the server's own.

    A context manager: leaving it stops the API (open long-polls released), records
    ``server.stopped`` and closes the audit log with its final signed checkpoint.
    """

    def __init__(self, config: Path, *, log_level: str = "warning") -> None:
        from server.app import create_app
        from server.config import load_server_config
        from server.runner import ServiceThread
        from server.wiring import open_server

        self.config = Path(config)
        self.runtime = open_server(load_server_config(self.config))
        section = self.runtime.config.server
        self.port = int(section.port)
        self.url = f"https://{LOOPBACK}:{self.port}"
        try:
            self.runtime.audit.record("server", "server.started", {"mode": "in-process",
                                                                   "policy_digest": self.runtime.policy.digest()})
            self.api = ServiceThread(create_app(self.runtime.services), host=section.host, port=section.port,
                                     ssl_context=self.runtime.ssl_context, log_level=log_level,
                                     name="in-process-server-api", stopping=self.runtime.services.stopping,
                                     limits=self.runtime.config.connections)
            self.api.start()
        except BaseException:
            self.runtime.close()
            raise

    @property
    def services(self) -> Any:
        return self.runtime.services

    @property
    def state(self) -> Any:
        return self.runtime.services.state

    @property
    def audit(self) -> Any:
        return self.runtime.audit

    def cpu_seconds(self) -> float:
        """CPU this process has used so far (the server's, plus whatever the caller does meanwhile)."""
        return time.process_time()

    def close(self, reason: str = "closed by the caller") -> None:
        try:
            self.api.stop()
            self.runtime.audit.record("server", "server.stopped", {"reason": reason})
        finally:
            self.runtime.close()

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close("error in the caller" if exc_type is not None else "closed by the caller")
