"""A trainer's long polls hold no worker thread: members' submissions are not queued behind them.

Before, ``GET /v1/trainer/rounds/...?wait=`` and ``GET /v1/trainer/run?wait=`` waited inside
the app's worker-thread pool (40 threads), the pool in which members' submissions are stored.
With as many ranks polling as the pool has threads, every other such route — a member's
submission the round is waiting for included — queued until a poll gave up. The real app
(``create_app`` on ``open_server``), with 45 polls of a round no member answers, then one more
request that needs a worker thread: it must be answered at once.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.consortium import write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, write_server_config
from starlette.testclient import TestClient
from test_wire_fuzz_routes import Peer

from corpus.prompts import build_prompts
from server.app import create_app
from server.config import load_server_config
from server.router import make_router
from server.trainer_rounds import TrainerRounds
from server.wiring import open_server
from sim.bench.grpo_step import AGENTS, features
from sim.bench.scorers import SCORERS
from sim.bench.thread_agents import ThreadAgents
from wire.messages import TaskItem
from wire.trainer import TrainerRoundRequest

POLLS = 45  # more than the 40 threads of the default pool
WAIT_S = 4.0


def test_many_long_polls_leave_the_worker_threads_free(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=free_port())
    runtime = open_server(load_server_config(config))
    agents = ThreadAgents(tmp_path / "members", AGENTS, SCORERS)  # never started: the round stays open
    prompts = build_prompts(1, seed=0)
    rounds = TrainerRounds(audit=agents.audit, deadline_s=30.0)
    rounds.set_ready(agents.coordinator(make_router("uniform", AGENTS), features, quorum=3, deadline_s=30.0), prompts)
    app = create_app(dataclasses.replace(runtime.services, long_poll_max_s=WAIT_S))
    app.state.trainer_rounds = rounds
    rounds.open("t", TrainerRoundRequest(run_id="r1", step=0, rank=0, prompt_ids=[prompts[0].prompt_id],
                                         items=[TaskItem(prompt_index=0, response="a red circle")]))
    client = TestClient(Peer(app, pki.issue("tessa", "trainer")), raise_server_exceptions=False)
    try:  # entered: one event loop for every request, as a server has (and so one worker-thread pool)
        with client, ThreadPoolExecutor(POLLS) as pool:
            polls = [pool.submit(client.get, f"/v1/trainer/rounds/r1/0/0?wait={WAIT_S}") for _ in range(POLLS)]
            time.sleep(1.0)  # every poll is waiting now
            started = time.monotonic()
            ready = client.post("/v1/trainer/steps", json={"run_id": "r1", "step": 0, "reward": 0.5})  # a thread
            took = time.monotonic() - started
            assert ready.status_code == 200, ready.text
            assert took < 1.5, f"a route needing a worker thread waited {took:.1f} s behind the long polls"
            assert {p.result().status_code for p in polls} == {202}  # still open after the wait
    finally:
        rounds.close()
        agents.close()
        runtime.close()
