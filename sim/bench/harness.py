"""A real consortium on loopback for the network sections: CA, policy, ``mor server serve``, agents.

Everything is the production path: certificates from :mod:`crypto.pki`, a policy file loaded by
the server, the server started as ``mor server serve`` in its own process, and synthetic agents
(:mod:`sim.bench.synth_agent`) as separate processes speaking mutual TLS through httpx. The
bench itself plays the server's training side: it creates rounds and tasks in the server's
:class:`~server.state.StateStore` (SQLite WAL allows the second process) and loads the server's
CKKS secret context to fuse, exactly as ``mor server run`` does in-process.

Everything is bounded: start-up waits at most ``START_TIMEOUT_S``, agents are stopped and then
killed, and the server gets SIGTERM then SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from crypto.pki import CertificateAuthority, init_ca
from sim.provision import write_toml

START_TIMEOUT_S = 90.0
_ENTRY = "import sys; from mor_cli.main import main; sys.exit(main(sys.argv[1:]))"
CONSORTIUM = "bench"
Mode = Literal["ckks", "tls-only", "fused-only"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def write_policy(path: Path, mode: Mode) -> Path:
    """A bench policy: every certified member admitted, rate limits far above the load we generate."""
    pilot = "true" if mode == "tls-only" else "false"  # tls-only is an insecure mode: pilots only
    path.write_text(f"""consortium = "{CONSORTIUM}"
pilot = {pilot}

[admission]
allow_all_certified = true

[privacy]
mode = "{mode}"
max_epsilon = 10.0
max_delta = 1e-5

[rounds]
quorum = 2
deadline_s = 120
group_size = 4
prompts_per_round = 4

[scores]
min = -100.0
max = 100.0
out_of_range = "refuse"
max_vector_length = 4096

[audit]
retention_days = 1

[limits]
max_body_bytes = 8000000
requests_per_minute = 600000
""", "utf-8")
    return path


@dataclass
class Consortium:
    """A CA with the server's certificate, and ``agents`` client certificates, under ``directory``."""

    directory: Path
    ca: CertificateAuthority
    agents: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path, n_agents: int) -> Consortium:
        ca = init_ca(directory / "ca", CONSORTIUM)
        ca.issue("server", "server", dns=("localhost",), ips=("127.0.0.1",))
        consortium = cls(directory, ca)
        for i in range(n_agents):
            consortium.add_agent(f"agent{i:03d}")
        return consortium

    def add_agent(self, name: str) -> str:
        self.ca.issue(name, "client")
        self.agents.append(name)
        return name

    def party(self, name: str) -> Path:
        return self.ca.directory / "parties" / name


class ServerProcess:
    """``mor server serve`` on a free loopback port; a context manager that always stops it."""

    command: tuple[str, ...] = ("server", "serve")

    def __init__(self, consortium: Consortium, mode: Mode, *, name: str = "server",
                 keyholder_url: str | None = None) -> None:
        if (mode == "fused-only") != (keyholder_url is not None):
            raise ValueError("a key holder URL is needed exactly under fused-only")
        self.port = free_port()
        self.data = consortium.directory / f"{name}-{mode}"
        self.data.mkdir(parents=True, exist_ok=True)
        ca = consortium.ca
        server_party = consortium.party("server")
        self.config = self.data / "server.toml"
        tls = {"cert": server_party / "cert.pem", "key": server_party / "key.pem", "ca": ca.ca_cert_path,
               "crl": ca.crl_path}
        write_toml(self.config, {"server": {
            "host": "127.0.0.1", "port": self.port, "policy": write_policy(self.data / "policy.toml", mode),
            "database_url": f"sqlite:///{self.data / 'state.db'}", "audit_dir": self.data / "audit",
            "signing_key": self.data / "server-signing.pem", "ckks_secret_context": self.data / "ckks-secret.bin",
            "keyholder_url": keyholder_url, "output_dir": self.data / "out"}, "tls": tls})
        self.log = self.data / "server.log"
        self.url = f"https://127.0.0.1:{self.port}"
        self.database_url = f"sqlite:///{self.data / 'state.db'}"
        self.ckks_secret = self.data / "ckks-secret.bin"
        self.audit_dir = self.data / "audit"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        return self.launch().wait_listening()

    def launch(self) -> ServerProcess:
        """Start the process without waiting (start several, then :meth:`wait_listening` on each)."""
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen([sys.executable, "-c", _ENTRY, *self.command, "--config",
                                          str(self.config)], env=_env(), stdout=sink, stderr=subprocess.STDOUT)
        return self

    def wait_listening(self) -> ServerProcess:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mor {' '.join(self.command)} exited with {self.proc.returncode}: "
                                   f"{self.log.read_text('utf-8', errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"mor {' '.join(self.command)} not listening after {START_TIMEOUT_S}s")

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (from /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def audit_actions(self, action: str) -> int:
        """How many entries of ``action`` the server's audit log holds (read from its entry file)."""
        count = 0
        for path in sorted(self.audit_dir.glob("*.jsonl")):
            for line in path.read_text("utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("action") == action or entry.get("entry", {}).get("action") == action:
                    count += 1
        return count

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class KeyHolderProcess(ServerProcess):
    """``mor keyholder serve`` (fused-only: the only party that decrypts, and only fused vectors)."""

    command = ("keyholder", "serve")

    def __init__(self, consortium: Consortium, *, name: str = "keyholder") -> None:
        self.port = free_port()
        self.data = consortium.directory / name
        self.data.mkdir(parents=True, exist_ok=True)
        party, ca = consortium.party("keyholder"), consortium.ca
        self.config = self.data / "keyholder.toml"
        write_toml(self.config, {"keyholder": {
            "host": "127.0.0.1", "port": self.port, "server_identity": f"mor://{CONSORTIUM}/server/server",
            "secret_context": self.data / "ckks-secret.bin", "audit_dir": self.data / "audit",
            "signing_key": self.data / "keyholder-signing.pem", "requests_per_s": 1000.0},
            "tls": {"cert": party / "cert.pem", "key": party / "key.pem", "ca": ca.ca_cert_path, "crl": ca.crl_path}})
        self.log = self.data / "keyholder.log"
        self.url = f"https://127.0.0.1:{self.port}"
        self.audit_dir = self.data / "audit"
        self.proc = None


class AgentProcess:
    """One agent process (default :mod:`sim.bench.synth_agent`); JSON lines on stdin (commands) and stdout (replies).

    ``server=None`` starts an agent that connects later, on command (:mod:`sim.bench.model_agent`).
    """

    def __init__(self, consortium: Consortium, name: str, server: ServerProcess | None, *, log_dir: Path,
                 module: str = "sim.bench.synth_agent", extra_args: tuple[str, ...] = ()) -> None:
        party = consortium.party(name)
        self.name = name
        self.identity = f"mor://{CONSORTIUM}/client/{name}"
        self.log = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        url = ("--url", server.url) if server is not None else ()
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *url, "--cert", str(party / "cert.pem"), "--key",
                 str(party / "key.pem"), "--ca", str(consortium.ca.ca_cert_path), "--identity", self.identity,
                 *extra_args],
                env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sink,
            )

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        """The next JSON line the agent prints (blocks; the agent bounds its own work)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"agent {self.name} exited ({self.proc.poll()}): "
                               f"{self.log.read_text('utf-8', errors='replace')[-1500:]}")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
