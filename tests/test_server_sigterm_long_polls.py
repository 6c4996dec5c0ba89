"""A SIGTERM'd ``mor server serve`` with idle long-polling agents exits at once, cleanly.

Why it matters: agents hold a long-poll open almost all the time, so every restart of the
server (deploy, rotation, crash-loop recovery) used to stall on uvicorn's graceful shutdown
waiting for those polls to time out. Measured on a real server process with two real agents
(their own certificates, mutual TLS 1.3) long-polling at the moment of the signal.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers.consortium import Agent, actions, audit_report, write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, start_server, write_server_config

pytestmark = pytest.mark.timeout(120)
STOP_BUDGET_S = 2.0


def _long_poll(agent: Agent, replies: list[int | str], started: threading.Event) -> None:
    started.set()
    try:
        replies.append(agent.http.get("/v1/tasks/next", params={"wait": 30}).status_code)
    except httpx.HTTPError as exc:  # the connection closing without a reply is a failure too
        replies.append(type(exc).__name__)


def test_sigterm_with_two_long_polling_agents_exits_0_within_two_seconds(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=free_port())
    server = start_server(config)
    try:
        agents = [Agent.of(pki, name, server.base_url) for name in ("alice", "bob")]
        for agent in agents:
            assert agent.enrol().status_code == 200
        replies: list[int | str] = []
        polls = []
        for agent in agents:
            started = threading.Event()
            poll = threading.Thread(target=_long_poll, args=(agent, replies, started), daemon=True)
            poll.start()
            started.wait(5)
            polls.append(poll)
        time.sleep(1.0)  # both requests are now parked inside the long-poll handler
        assert replies == [] and server.alive()

        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=30)
        elapsed = time.monotonic() - signalled
        for poll in polls:
            poll.join(5)
    finally:
        server.stop()
        for agent in agents:
            agent.close()
    print(f"SIGTERM -> exit with 2 open long-polls: {elapsed:.2f} s")
    assert code == 0, server.log_text()
    assert elapsed < STOP_BUDGET_S, (elapsed, server.log_text())
    assert replies == [204, 204]  # each poll got a proper "no task" answer, not a dropped connection

    report = audit_report(config)
    assert report.ok, report.first_problem
    assert report.uncovered == 0  # the final checkpoint was signed
    assert actions(report, "server")["server.stopped"] == 1
