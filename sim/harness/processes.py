"""Real subprocesses for the demo, the bench and the tests: start, probe, wait, stop — each with its own log.

Why separate processes (not threads): a run must show the system as it is deployed — the
server, the key holder and every agent hold their own keys, open their own audit logs and
talk only over mTLS on loopback. A process that dies is reported with the tail of its log,
never as a bare timeout.

Two readiness probes: :func:`wait_ready` (a 200 over mutual TLS: the TLS material loaded and
the app serves — what the demo waits for) and :func:`wait_listening` (the port accepts TCP —
enough for tests that then speak TLS themselves, and for processes whose TLS the caller is
about to test).

Stopping is graceful first: SIGTERM (every ``mor`` service signs a final audit checkpoint and
exits 0 on it), then SIGKILL after a grace period — the SIGKILL is recorded on the handle
(``killed``) because a killed service leaves an unsigned tail in its audit log.

    group = ProcessGroup(logs=out / "logs")
    server = group.start("server", ["server", "serve", "--config", str(cfg)])
    wait_ready(server, "https://127.0.0.1:8443/v1/status", ssl_context=auditor_ctx)
    group.stop_all()                 # reverse start order, SIGTERM then SIGKILL

    with start_mor("server", ["server", "serve", "--config", str(cfg)], log=log, port=port) as server:
        wait_listening(server)       # leaving the block: SIGTERM, then SIGKILL
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from sim.errors import ProcessFailedError, ProcessTimeoutError

# Not ``-m mor_cli.main``: that would make it ``__main__`` and CommandError from the command
# modules (which import ``mor_cli.main``) would no longer be caught as a one-line error.
MOR_ENTRY = "import sys; from mor_cli.main import main; sys.exit(main(sys.argv[1:]))"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1"}
DEFAULT_GRACE_S = 30.0
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 90.0


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mor_command(args: Sequence[str]) -> list[str]:
    """The argv that runs ``mor <args>`` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-c", MOR_ENTRY, *args]


@dataclass
class ManagedProcess:
    """One running subprocess, its log file, how it ended, and (for a service) the loopback port it serves.

    A context manager: leaving the block stops it (SIGTERM, then SIGKILL).
    """

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)
    killed: bool = False
    port: int | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise ValueError(f"{self.name}: not started as a service (no port)")
        return f"https://{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        """This process's combined stdout/stderr so far."""
        try:
            return self.log.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        """The end of :meth:`log_text`."""
        return self.log_text()[-chars:]

    def failure(self, what: str) -> ProcessFailedError:
        return ProcessFailedError(f"{self.name} {what} (exit {self.returncode}); log {self.log}:\n"
                                  f"{self.log_tail()}")

    def wait(self, timeout: float | None = None, *, poll: Callable[[], None] | None = None,
             interval: float = 0.5) -> int:
        """Block until it exits (``ProcessTimeoutError`` after ``timeout``); ``poll`` runs between checks."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.alive():
            if poll is not None:
                poll()
            if deadline is not None and time.monotonic() >= deadline:
                raise ProcessTimeoutError(f"{self.name} still running after {timeout:.0f} s; log {self.log}:\n"
                                          f"{self.log_tail()}")
            try:
                self.proc.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                continue
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL (no shutdown handlers run: what a crash looks like), then reap."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = DEFAULT_GRACE_S) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(timeout=30)
        return int(self.proc.returncode)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(20.0)


def start_process(name: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                  cwd: Path | None = None, port: int | None = None, piped: bool = False) -> ManagedProcess:
    """Start ``argv`` with stdout and stderr appended to ``log`` (offline environment variables set).

    ``piped``: stdin and stdout are pipes to this process (a child driven by commands, like the
    bench's agents); only stderr goes to ``log``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    with log.open("ab") as sink:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=full_env, stdout=subprocess.PIPE if piped else sink,
                                stderr=sink if piped else subprocess.STDOUT,
                                stdin=subprocess.PIPE if piped else subprocess.DEVNULL)
    return ManagedProcess(name=name, proc=proc, log=log, argv=list(argv), port=port)


def start_mor(name: str, mor_args: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, port: int | None = None) -> ManagedProcess:
    """Start ``mor <mor_args>`` with this interpreter as ``name`` (``port``: the loopback port it will serve)."""
    return start_process(name, mor_command(mor_args), log=log, env=env, cwd=cwd, port=port)


def wait_listening(process: ManagedProcess, timeout: float = START_TIMEOUT_S) -> ManagedProcess:
    """Block until ``process`` accepts TCP connections on its port; fail with its log if it exits first.

    On a timeout the process is killed, so a test that fails here leaves nothing running.
    """
    if process.port is None:
        raise ValueError(f"{process.name}: started without a port, nothing to wait for")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise process.failure("exited during start-up")
        try:
            with socket.create_connection((LOOPBACK, process.port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise ProcessTimeoutError(f"{process.name} not listening on port {process.port} after {timeout:.0f} s; log "
                              f"{process.log}:\n{process.log_tail()}")


def wait_ready(process: ManagedProcess, url: str, *, ssl_context: ssl.SSLContext, timeout: float = 120.0,
               interval: float = 0.25) -> None:
    """Block until ``GET url`` answers 200 over mutual TLS; fail with the log if the process exits first.

    Why a real mTLS request rather than a TCP connect: an open port only says uvicorn bound it;
    a 200 says the TLS material loaded, the chain verifies both ways and the app is serving.
    """
    import httpx

    deadline = time.monotonic() + timeout
    last = "no attempt"
    with httpx.Client(verify=ssl_context, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if not process.alive():
                raise process.failure("exited during start-up")
            try:
                response = client.get(url)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            time.sleep(interval)
    raise ProcessTimeoutError(f"{process.name} not ready at {url} after {timeout:.0f} s ({last}); log "
                              f"{process.log}:\n{process.log_tail()}")


class ProcessGroup:
    """Processes started together and stopped together (reverse start order), also on errors."""

    def __init__(self, logs: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.logs, self.env, self.cwd = logs, dict(env or {}), cwd
        self.processes: list[ManagedProcess] = []

    def start(self, name: str, mor_args: Sequence[str], *, env: Mapping[str, str] | None = None) -> ManagedProcess:
        """Start ``mor <mor_args>`` as ``name`` (log: ``logs/<name>.log``)."""
        process = start_process(name, mor_command(mor_args), log=self.logs / f"{name}.log",
                                env={**self.env, **(env or {})}, cwd=self.cwd)
        self.processes.append(process)
        return process

    def stop_all(self, grace_s: float = DEFAULT_GRACE_S) -> dict[str, int]:
        """Stop every process still running, newest first; name -> exit code."""
        codes: dict[str, int] = {}
        for process in reversed(self.processes):
            codes[process.name] = process.stop(grace_s)
        return codes

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all(grace_s=5.0 if exc_type is not None else DEFAULT_GRACE_S)
