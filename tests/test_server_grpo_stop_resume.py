"""A clean stop of GRPO training: the step in flight finishes, is checkpointed, and a restart resumes there.

What an operator relies on: SIGTERM to ``mor server run`` during GRPO neither throws away a
step the agents were already asked to score nor leaves the policy between checkpoints; the
process exits 0 with ``training.stopped`` (reason, step, checkpoint) in the signed audit log,
and the next run continues from that checkpoint.

The process test is real end to end: ``mor server run`` as a subprocess, one agent with its own
certificate and Ed25519 key answering every task over mutual TLS with CKKS-sealed scores,
the server's audit log verified at the end.
"""

from __future__ import annotations

import json
import signal
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers.consortium import Agent, actions, audit_report, write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, start_server_run, write_server_config, write_toml

from corpus.prompts import build_prompts
from corpus.types import Prompt
from crypto.ckks import PublicContext, load_public_context
from crypto.envelope import seal_scores
from server.grpo import GRPORunConfig, run_grpo
from server.vlm import build_small_vlm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_vlm(tmp_path_factory.mktemp("stop") / "policy", seed=0)


def test_stop_finishes_the_step_checkpoints_it_and_the_next_run_resumes_there(policy_dir: Path,
                                                                               tmp_path: Path) -> None:
    prompts: list[Prompt] = build_prompts(4, seed=0)
    scored: list[int] = []

    def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        scored.append(len(completions))
        return [len(c[0]["content"]) / 10 for c in completions]

    def config(max_steps: int) -> GRPORunConfig:
        return GRPORunConfig(output_dir=tmp_path / "run", max_steps=max_steps, group_size=2, per_device_batch=2,
                             learning_rate=1e-2, max_completion_length=6, save_steps=100)  # no periodic checkpoint

    stopped = run_grpo(model_path=policy_dir, prompts=prompts, reward_fn=reward, config=config(4),
                       stop=lambda: "operator asked" if scored else None)  # asked while step 1 is being scored
    assert stopped.stopped_reason == "operator asked" and stopped.global_step == 1 and len(scored) == 1
    assert [s["step"] for s in stopped.steps] == [1]  # the step in flight was finished and logged
    assert stopped.adapter_path == tmp_path / "run" / "checkpoint-1"  # saved although save_steps=100
    assert (stopped.adapter_path / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / "final").exists()

    resumed = run_grpo(model_path=policy_dir, prompts=prompts, reward_fn=reward, config=config(2))
    assert resumed.resumed_from == tmp_path / "run" / "checkpoint-1"
    assert [s["step"] for s in resumed.steps] == [2] and resumed.stopped_reason is None
    assert (resumed.adapter_path / "adapter_config.json").is_file() and resumed.global_step == 2


def _answer(agent: Agent, task: dict[str, Any], context: PublicContext) -> None:
    """Score like a reward model would (longer answers higher), seal under CKKS, sign, submit."""
    scores = [min(10.0, len(item["response"]) / 10 + 0.1 * i) for i, item in enumerate(task["items"])]
    envelope = seal_scores(scores, context, signing_key=agent.key, sender=agent.identity,
                           round_id=task["round_id"], task_id=task["task_id"]).to_dict()
    reply = agent.submit(task["task_id"], envelope)
    assert reply.status_code == 200, reply.text


def _next_task(agent: Agent, deadline_s: float, log: str) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        reply = agent.http.get("/v1/tasks/next", params={"wait": 10})
        if reply.status_code == 200:
            return dict(reply.json())
    raise AssertionError(f"no task within {deadline_s} s:\n{log}")


def _audit_details(config: Path, action: str) -> list[dict[str, Any]]:
    audit_dir = Path(tomllib.loads(config.read_text("utf-8"))["server"]["audit_dir"])
    lines = (audit_dir / "entries.jsonl").read_text("utf-8").splitlines()
    return [e["entry"]["details"] for e in map(json.loads, lines) if e["entry"]["action"] == action]


def test_sigterm_during_grpo_finishes_the_step_saves_a_checkpoint_and_exits_0(policy_dir: Path,
                                                                              tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=free_port())
    out = tmp_path / "out"
    training = write_toml(tmp_path / "training.toml", {"training": {
        "model_path": str(policy_dir), "output_dir": str(out), "quorum": 1, "deadline_s": 120,
        "enrol_timeout_s": 120, "router": "uniform", "n_calibration": 4, "n_prompts": 2, "group_size": 2,
        "per_device_batch": 2, "max_steps": 3, "max_completion_length": 6, "learning_rate": 1e-2}})
    server = start_server_run(config, training)
    try:
        alice = Agent.of(pki, "alice", server.base_url)
        assert alice.enrol().status_code == 200
        context = load_public_context(alice.http.get("/v1/context").content)
        calibrate = _next_task(alice, 90, server.log_text())
        assert calibrate["kind"] == "calibrate"
        _answer(alice, calibrate, context)
        step_1 = _next_task(alice, 120, server.log_text())
        assert step_1["kind"] == "score"
        status = alice.http.get("/v1/status").json()  # the router in use, as the trainer recorded it
        assert status["rounds_collected"] == 1 and status["router"]["kind"] == "uniform"
        assert status["router_weights"] == {alice.identity: 1.0}

        server.proc.send_signal(signal.SIGTERM)  # while step 1's round waits for alice
        time.sleep(1.0)
        assert server.alive()  # it waits for the step in flight instead of dropping it
        _answer(alice, step_1, context)
        alice.close()  # an idle pooled TLS connection would hold uvicorn's shutdown for its grace period
        code = server.proc.wait(timeout=120)
    finally:
        server.stop()
    assert code == 0, server.log_text()

    report = audit_report(config)
    assert report.ok, report.first_problem
    assert report.uncovered == 0
    counts = actions(report, "server")
    assert (counts["grpo.step"], counts["round.fused"], counts["training.finished"]) == (1, 1, 0), counts
    [stopped] = _audit_details(config, "training.stopped")
    assert stopped["reason"] == "signal SIGTERM" and stopped["step"] == 1
    assert stopped["checkpoint"] == str(out / "grpo" / "checkpoint-1")
    assert (out / "grpo" / "checkpoint-1" / "trainer_state.json").is_file()  # what the next run resumes from
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
