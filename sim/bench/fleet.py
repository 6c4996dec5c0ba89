"""The bench's consortium on loopback: CA and policy, the server in-process, a key holder and agent processes.

Certificates, configs and processes come from the shared harness (:mod:`sim.harness`); what
is the bench's own is its policy (rate limits far above the load it generates), connection
bounds per peer that let a whole fleet connect from loopback, and its agents, which take
JSON-line commands on stdin (:mod:`sim.bench.synth_agent`, :mod:`sim.bench.model_agent`).

The server runs as :class:`sim.harness.InProcessServer`: ``mor server run``'s process model
(API thread + training side in one process, one state store, one audit log). The bench plays
the training side there — a :class:`~server.rounds.RoundCoordinator` on the server's own
store, audit log and privacy-mode object — so every round it opens is issued, audited and
fused by the server exactly as in a deployment. The key holder (fused-only) and the agents are
separate processes over mutual TLS, as deployed.

Everything is bounded: start-up waits at most ``START_TIMEOUT_S``, agents are asked to quit and
then killed, the key holder gets SIGTERM then SIGKILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

from sim.harness import (
    ConsortiumPKI,
    InProcessServer,
    ManagedProcess,
    free_port,
    keyholder_config,
    server_config,
    start_keyholder,
    start_process,
    write_toml,
)

CONSORTIUM = "bench"
# every bench agent connects from 127.0.0.1: the per-peer bounds (16 handshakes, 64 connections) are for one site
BENCH_CONNECTIONS = {"max_connections_per_ip": 1024, "max_handshakes_per_ip": 256, "max_handshakes": 256}
Mode = Literal["ckks", "tls-only", "fused-only"]


def write_policy(path: Path, mode: Mode) -> Path:
    """A bench policy: every certified member admitted, rate limits far above the load we generate."""
    return write_toml(path, {
        "admission": {"allow_all_certified": True},
        "privacy": {"mode": mode, "max_epsilon": 10.0, "max_delta": 1e-5},
        "rounds": {"quorum": 2, "deadline_s": 120, "group_size": 4, "prompts_per_round": 4},
        "scores": {"min": -100.0, "max": 100.0, "out_of_range": "refuse", "max_vector_length": 4096},
        "audit": {"retention_days": 1},
        "limits": {"max_body_bytes": 8_000_000, "requests_per_minute": 600_000},
    }, top={"consortium": CONSORTIUM, "pilot": mode == "tls-only"})  # tls-only is an insecure mode: pilots only


def bench_pki(directory: Path, n_agents: int, *, keyholder: bool = False) -> ConsortiumPKI:
    """A CA with the server's certificate (and the key holder's), and ``agent000``.. client certificates."""
    pki = ConsortiumPKI.create(directory / "ca", CONSORTIUM)
    pki.issue("server", "server")
    if keyholder:
        pki.issue("keyholder", "keyholder")
    for i in range(n_agents):
        pki.issue(f"agent{i:03d}")
    return pki


def agent_names(pki: ConsortiumPKI) -> list[str]:
    return [p.name for p in pki.parties.values() if p.role == "client"]


def start_server(pki: ConsortiumPKI, mode: Mode, *, keyholder_url: str | None = None) -> InProcessServer:
    """The server for ``mode`` in this process (data under ``server-<mode>``); close it when done."""
    if (mode == "fused-only") != (keyholder_url is not None):
        raise ValueError("a key holder URL is needed exactly under fused-only")
    data = pki.directory.parent / f"server-{mode}"
    data.mkdir(parents=True, exist_ok=True)
    config = server_config(data / "server.toml", data=data, tls=pki.tls("server"), port=free_port(),
                           policy=write_policy(data / "policy.toml", mode), keyholder_url=keyholder_url,
                           ckks_secret=mode != "fused-only")
    tables = tomllib.loads(config.read_text("utf-8"))
    write_toml(config, {**tables, "connections": BENCH_CONNECTIONS})
    return InProcessServer(config)


def start_keyholder_process(pki: ConsortiumPKI) -> ManagedProcess:
    """``mor keyholder serve`` as its own process (fused-only: the only party that decrypts, and only sums)."""
    data = pki.directory.parent / "keyholder"
    config = keyholder_config(data / "keyholder.toml", data=data, tls=pki.tls("keyholder"), port=free_port(),
                              server_identity=pki.server.identity, requests_per_s=1000.0)
    return start_keyholder(config)


def audit_actions(audit_dir: Path, action: str) -> int:
    """How many entries of ``action`` an audit log holds (read from its entry file, as an auditor would)."""
    count = 0
    for path in sorted(Path(audit_dir).glob("*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("action") == action or entry.get("entry", {}).get("action") == action:
                count += 1
    return count


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (``/proc/<pid>/stat``; 0.0 where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text("ascii").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


class AgentProcess:
    """One agent process (default :mod:`sim.bench.synth_agent`); JSON lines on stdin (commands) and stdout (replies).

    ``server_url=None`` starts an agent that connects later, on command (:mod:`sim.bench.model_agent`).
    """

    def __init__(self, pki: ConsortiumPKI, name: str, server_url: str | None, *, log_dir: Path,
                 module: str = "sim.bench.synth_agent", extra_args: tuple[str, ...] = ()) -> None:
        party = pki.party(name)
        self.name, self.identity = name, party.identity
        url = ("--url", server_url) if server_url is not None else ()
        self.process = start_process(name, [sys.executable, "-m", module, *url, "--cert", str(party.cert), "--key",
                                            str(party.key), "--ca", str(pki.ca_cert), "--identity", self.identity,
                                            *extra_args], log=log_dir / f"{name}.log", piped=True)
        self.proc, self.log = self.process.proc, self.process.log

    def cpu_seconds(self) -> float:
        """CPU this agent process has used so far (what it took from the cores the server shares)."""
        return process_cpu_seconds(self.proc.pid)

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        """The next JSON line the agent prints (blocks; the agent bounds its own work)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise self.process.failure("exited")
        return dict(json.loads(line))

    def close(self) -> None:
        """Ask it to quit; kill it if it has not within 10 s."""
        if self.process.alive():
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


def start_agents(pki: ConsortiumPKI, server_url: str, names: list[str], log_dir: Path) -> list[AgentProcess]:
    """Synthetic agents for ``names``, each enrolled (its ``ready`` line read) before this returns."""
    from tqdm import tqdm

    agents = [AgentProcess(pki, name, server_url, log_dir=log_dir) for name in names]
    try:
        for agent in tqdm(agents, desc="agents enrolling", unit="agent", leave=False, disable=None):
            ready = agent.reply()
            if "ready" not in ready:
                raise RuntimeError(f"agent {agent.name}: {ready}")
    except BaseException:
        for agent in agents:
            agent.close()
        raise
    return agents
