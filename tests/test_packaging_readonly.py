"""The server runs on a read-only root filesystem, writing only its state folder and a tmp folder.

What the images promise (``deploy/docker/Dockerfile``, ``readOnlyRootFilesystem`` in
``deploy/k8s/``), checked without a container runtime: a real ``mor server serve`` in its own
mount namespace (``unshare --mount``) where ``/`` — the repository, the virtualenv, the configs,
the PKI, ``/tmp`` — is remounted read-only and only the state folder and a scratch tmp folder
stay writable, as the volumes and the tmpfs are in a container. It must start, answer
``/readyz`` with every check ok, enrol a member (state store and audit log writes), and stop
on SIGTERM with exit 0 and a verifiable audit log. Needs root (mount namespaces); elsewhere it
skips and says why.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from helpers.consortium import Agent, audit_report, write_policy
from helpers.pki import make_pki
from helpers.procs import REPO_ROOT, free_port, write_server_config

from sim.harness.configs import config_port
from sim.harness.processes import mor_command, start_process, wait_listening

pytestmark = pytest.mark.timeout(120)


def _namespaces_usable() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) for a private mount namespace"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=10)
    return None if probe.returncode == 0 else f"unshare --mount refused: {probe.stderr.decode().strip()}"


def test_server_serves_with_a_read_only_root(tmp_path: Path) -> None:
    reason = _namespaces_usable()
    if reason:
        pytest.skip(reason)
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml", mode="ckks"),
                                 port=free_port())
    probe_port = free_port()
    with config.open("a", encoding="utf-8") as file:
        file.write(f'\n[observability]\nprobe_port = {probe_port}\n')
    state, scratch = tmp_path / "server-data", tmp_path / "scratch"
    state.mkdir()
    scratch.mkdir()
    mounts = " && ".join(f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))}" for p in (state, scratch))
    script = (f"{mounts} && mount -o remount,bind,ro / && "
              f"exec {shlex.join(mor_command(['server', 'serve', '--config', str(config)]))}")
    env = {"HOME": str(state), "TMPDIR": str(scratch), "MPLCONFIGDIR": str(scratch / "matplotlib"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    server = start_process("server", ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                           log=tmp_path / "server.log", env=env, cwd=REPO_ROOT, port=config_port(config, "server"))
    with wait_listening(server):
        ready = httpx.get(f"http://127.0.0.1:{probe_port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        alice = Agent.of(pki, "alice", server.base_url)
        assert alice.enrol().status_code == 200
        alice.close()
        assert server.stop() == 0, server.log_text()
    log = server.log_text()
    assert "Read-only file system" not in log, log
    report = audit_report(config)
    assert report.ok and report.uncovered == 0, report.first_problem
    assert {p.name for p in state.iterdir()} >= {"audit", "server-signing.pem", "ckks-secret.bin", "state.db"}
