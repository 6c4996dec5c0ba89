"""Start real ``mor server serve`` / ``mor keyholder serve`` processes on loopback, for tests.

    port = free_port()
    config = write_server_config(tmp_path, pki, policy=policy_path, port=port)
    with start_server(config) as server:          # waits until the port accepts connections
        httpx.get(server.url("/v1/status"), verify=alice.client_context())
        server.kill()                             # SIGKILL: what a crash looks like
    # leaving the block terminates it if still running; server.log holds its stdout+stderr

A process that exits during start-up fails the test with its log, not with a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from helpers.pki import TestPKI
from policies.render import toml_document

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0
_ENTRY = "import sys; from mor_cli.main import main; sys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_toml(path: Path, tables: Mapping[str, Mapping[str, object]], top: Mapping[str, object] | None = None) -> Path:
    """Write ``top`` keys, then one ``[table]`` per entry of ``tables`` (None values are left out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_document(tables, top=top), "utf-8")
    return path


def write_server_config(directory: Path, pki: TestPKI, *, policy: Path, port: int,
                        keyholder_url: str | None = None, name: str = "server.toml",
                        **server_overrides: object) -> Path:
    """A server TOML in ``directory`` (state, audit log and keys under ``directory/server-data``)."""
    data = Path(directory) / "server-data"
    server: dict[str, object] = {
        "host": "127.0.0.1", "port": port, "policy": str(policy),
        "database_url": f"sqlite:///{data / 'state.db'}", "audit_dir": str(data / "audit"),
        "signing_key": str(data / "server-signing.pem"), "ckks_secret_context": str(data / "ckks-secret.bin"),
        "output_dir": str(data / "out"), "keyholder_url": keyholder_url,
    }
    server.update(server_overrides)
    tls = {"cert": str(pki.server.cert), "key": str(pki.server.key), "ca": str(pki.ca_cert), "crl": str(pki.crl)}
    return write_toml(Path(directory) / name, {"server": server, "tls": tls})


def write_keyholder_config(directory: Path, pki: TestPKI, *, port: int, name: str = "keyholder.toml",
                           **overrides: object) -> Path:
    """A key-holder TOML accepting only ``pki.server``'s identity on ``/v1/decrypt-fused``."""
    data = Path(directory) / "keyholder-data"
    keyholder: dict[str, object] = {
        "host": "127.0.0.1", "port": port, "server_identity": pki.server.identity,
        "secret_context": str(data / "ckks-secret.bin"), "audit_dir": str(data / "audit"),
        "signing_key": str(data / "keyholder-signing.pem"),
    }
    keyholder.update(overrides)
    tls = {"cert": str(pki.keyholder.cert), "key": str(pki.keyholder.key), "ca": str(pki.ca_cert),
           "crl": str(pki.crl)}
    return write_toml(Path(directory) / name, {"keyholder": keyholder, "tls": tls})


def _port_of(config: Path, table: str) -> int:
    import tomllib

    return int(tomllib.loads(config.read_text("utf-8"))[table]["port"])


@dataclass
class ServiceProcess:
    """A running ``mor ... serve`` subprocess; usable as a context manager (terminates on exit)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text("utf-8", errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL (no shutdown handlers run: a crash), then reap."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful), SIGKILL if it does not exit within ``timeout``; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return int(self.proc.returncode)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def wait_for_port(service: ServiceProcess, timeout: float = START_TIMEOUT_S) -> None:
    """Block until ``service`` accepts TCP connections; fail with its log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{' '.join(service.args)} exited with {service.proc.returncode}:\n"
                               f"{service.log_text()}")
        try:
            with socket.create_connection(("127.0.0.1", service.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    service.kill()
    raise TimeoutError(f"{' '.join(service.args)} not listening after {timeout}s:\n{service.log_text()}")


def start_service(args: list[str], *, port: int, log: Path, env: dict[str, str] | None = None,
                  timeout: float = START_TIMEOUT_S) -> ServiceProcess:
    """Run the ``mor`` command with ``args`` and wait until ``port`` listens."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", **(env or {})}
    log.parent.mkdir(parents=True, exist_ok=True)
    # not `-m mor_cli.main`: that makes it `__main__`, and CommandError raised by the command
    # modules (imported from `mor_cli.main`) would no longer be caught as a one-line error
    command = [sys.executable, "-c", _ENTRY, *args]
    with log.open("ab") as sink:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=sink, stderr=subprocess.STDOUT)
    service = ServiceProcess(proc=proc, port=port, log=log, args=command)
    wait_for_port(service, timeout)
    return service


def start_server(config: Path, *, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT_S,
                 log: Path | None = None) -> ServiceProcess:
    """Start ``mor server serve --config config`` and wait until it listens."""
    config = Path(config)
    return start_service(["server", "serve", "--config", str(config)], port=_port_of(config, "server"),
                         log=log or config.with_suffix(".log"), env=env, timeout=timeout)


def start_server_run(config: Path, training: Path, *, env: dict[str, str] | None = None,
                     timeout: float = START_TIMEOUT_S, log: Path | None = None) -> ServiceProcess:
    """Start ``mor server run --config config --training training`` and wait until its API listens."""
    config = Path(config)
    return start_service(["server", "run", "--config", str(config), "--training", str(training)],
                         port=_port_of(config, "server"), log=log or config.with_suffix(".run.log"), env=env,
                         timeout=timeout)


def start_keyholder(config: Path, *, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT_S,
                    log: Path | None = None) -> ServiceProcess:
    """Start ``mor keyholder serve --config config`` and wait until it listens."""
    config = Path(config)
    return start_service(["keyholder", "serve", "--config", str(config)], port=_port_of(config, "keyholder"),
                         log=log or config.with_suffix(".log"), env=env, timeout=timeout)
