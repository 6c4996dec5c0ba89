"""Real ``mor server serve|run`` / ``mor keyholder serve`` / ``mor client run`` processes on loopback, for tests.

    port = free_port()
    config = write_server_config(tmp_path, pki, policy=policy_path, port=port)
    with start_server(config) as server:          # waits until the port accepts connections
        httpx.get(server.url("/v1/status"), verify=alice.client_context())
        server.kill()                             # SIGKILL: what a crash looks like
    # leaving the block terminates it if still running; server.log holds its stdout+stderr

Only the test-friendly defaults live here (data folders beside the config, processes started
from the repository root); starting, probing and stopping is the shared harness's (:mod:`sim.harness`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from helpers.pki import TestPKI
from sim import harness
from sim.harness import START_TIMEOUT_S, free_port, write_toml
from sim.harness import ManagedProcess as ServiceProcess

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_server_config(directory: Path, pki: TestPKI, *, policy: Path, port: int,
                        keyholder_url: str | None = None, name: str = "server.toml",
                        **server_overrides: object) -> Path:
    """A server TOML in ``directory`` (state, audit log and keys under ``directory/server-data``)."""
    return harness.server_config(Path(directory) / name, data=Path(directory) / "server-data",
                                 tls=pki.tls(pki.server.name), policy=policy, port=port, keyholder_url=keyholder_url,
                                 **server_overrides)


def write_keyholder_config(directory: Path, pki: TestPKI, *, port: int, name: str = "keyholder.toml",
                           **overrides: object) -> Path:
    """A key-holder TOML accepting only ``pki.server``'s identity on ``/v1/decrypt-fused``."""
    return harness.keyholder_config(Path(directory) / name, data=Path(directory) / "keyholder-data",
                                    tls=pki.tls(pki.keyholder.name), server_identity=pki.server.identity, port=port,
                                    **overrides)


def start_server(config: Path, *, env: Mapping[str, str] | None = None, timeout: float = START_TIMEOUT_S,
                 log: Path | None = None) -> ServiceProcess:
    """Start ``mor server serve --config config`` and wait until it listens."""
    return harness.start_server(config, log=log, env=env, cwd=REPO_ROOT, timeout=timeout)


def start_server_run(config: Path, training: Path, *, env: Mapping[str, str] | None = None,
                     timeout: float = START_TIMEOUT_S, log: Path | None = None) -> ServiceProcess:
    """Start ``mor server run --config config --training training`` and wait until its API listens."""
    return harness.start_server(config, training=training, log=log, env=env, cwd=REPO_ROOT, timeout=timeout)


def start_keyholder(config: Path, *, env: Mapping[str, str] | None = None, timeout: float = START_TIMEOUT_S,
                    log: Path | None = None) -> ServiceProcess:
    """Start ``mor keyholder serve --config config`` and wait until it listens."""
    return harness.start_keyholder(config, log=log, env=env, cwd=REPO_ROOT, timeout=timeout)


def start_agent(config: Path, *, log: Path, env: Mapping[str, str] | None = None) -> ServiceProcess:
    """Start ``mor client run --config config --quiet`` (not waited for: an agent serves no port)."""
    return harness.start_mor(Path(config).stem, ["client", "run", "--config", str(config), "--quiet"], log=log,
                             env=env, cwd=REPO_ROOT)


__all__ = ["REPO_ROOT", "ServiceProcess", "free_port", "start_agent", "start_keyholder", "start_server",
           "start_server_run", "write_keyholder_config", "write_server_config", "write_toml"]
