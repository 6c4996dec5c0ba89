"""Training apart from the API: two trainer ranks (DDP on gloo) against a real service and three members.

What an operator relies on when the policy outgrows one process: ``mor server serve --training``
keeps the API, the stages and the rounds; ``accelerate launch ... mor server train`` runs the
ranks, each with the consortium's ``trainer`` certificate over mutual TLS. Shown here end to
end: every rank's reward call of every step is its own round ``(run, step, rank)`` fused from
three members' CKKS-sealed scores, no member is asked about a completion twice, only the
trainer role may open rounds, and the two ranks end with bit-identical LoRA weights that
actually moved.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from helpers.consortium import Agent, actions, audit_report, write_policy
from helpers.pki import make_pki
from helpers.procs import REPO_ROOT, free_port, write_server_config, write_toml
from safetensors.torch import load_file

from crypto.ckks import load_public_context
from crypto.envelope import seal_scores
from server.vlm import build_small_vlm
from sim.harness.processes import start_mor, start_process, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


class Member(threading.Thread):
    """A member answering every task with CKKS-sealed scores (its own preference: answer length, offset)."""

    def __init__(self, agent: Agent, offset: float) -> None:
        super().__init__(daemon=True, name=f"member-{agent.identity}")
        self.agent, self.offset, self.stop = agent, offset, threading.Event()
        self.items_seen: Counter[str] = Counter()
        self.errors: list[str] = []
        self.context = load_public_context(agent.http.get("/v1/context").content)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.agent.http.get("/v1/tasks/next", params={"wait": 1})
                if reply.status_code != 200:
                    continue
                task = reply.json()
                if task["kind"] == "score":
                    self.items_seen.update(f"{task['prompts'][i['prompt_index']]['prompt_id']}|{i['response']}"
                                           for i in task["items"])
                scores = [min(9.0, len(i["response"]) / 8 + self.offset) for i in task["items"]]
                envelope = seal_scores(scores, self.context, signing_key=self.agent.key, sender=self.agent.identity,
                                       round_id=task["round_id"], task_id=task["task_id"]).to_dict()
                answer = self.agent.submit(task["task_id"], envelope)
                if answer.status_code != 200:
                    self.errors.append(answer.text)
            except httpx.HTTPError as exc:
                if not self.stop.is_set():
                    self.errors.append(repr(exc))


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_vlm(tmp_path_factory.mktemp("ranks") / "policy", seed=0)


def _training(tmp_path: Path, policy_dir: Path, pki: Any, port: int) -> tuple[Path, Path]:
    trainer = pki.issue("trainer-1", "trainer")
    out = tmp_path / "out"
    return out, write_toml(tmp_path / "training.toml", {
        "training": {"model_path": str(policy_dir), "output_dir": str(out), "quorum": 3, "deadline_s": 90,
                     "enrol_timeout_s": 120, "router": "uniform", "n_calibration": 4, "n_prompts": 4,
                     "group_size": 2, "per_device_batch": 2, "max_steps": 2, "max_completion_length": 6,
                     "learning_rate": 1e-2},
        "trainer": {"server_url": f"https://127.0.0.1:{port}", "cert": str(trainer.cert),
                    "key": str(trainer.key), "ca": str(trainer.ca), "run_id": "ddp-test"}})


def test_two_ddp_ranks_train_against_the_service_and_stay_identical(policy_dir: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    port = free_port()
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=port)
    out, training = _training(tmp_path, policy_dir, pki, port)
    server = wait_listening(start_mor("server", ["server", "serve", "--config", str(config), "--training",
                                                 str(training)], log=tmp_path / "server.log", cwd=REPO_ROOT,
                                      port=port))
    members: list[Member] = []
    try:
        for k, name in enumerate(("alice", "bob", "carol")):
            agent = Agent.of(pki, name, server.base_url)
            assert agent.enrol().status_code == 200
            members.append(Member(agent, offset=0.5 * k))
        # only the trainer role opens rounds or reads the run: a member and an auditor are refused
        body = {"run_id": "x", "step": 0, "rank": 0, "prompt_ids": ["p"],
                "items": [{"prompt_index": 0, "response": "r"}]}
        refused = members[0].agent.http.post("/v1/trainer/rounds", json=body)
        assert (refused.status_code, refused.json()["code"]) == (403, "trainer_only")
        auditor = pki.issue("audit", "auditor")
        with httpx.Client(base_url=server.base_url, verify=auditor.client_context()) as http:
            assert http.get("/v1/trainer/run").json()["code"] == "trainer_only"
        for member in members:
            member.start()

        started = time.monotonic()
        _launch(training, tmp_path / "trainer.log", server)
        print(f"two ranks, 2 steps: {time.monotonic() - started:.1f} s")
        first_run = [load_file(str(out / "ranks" / f"rank-{r}.safetensors")) for r in (0, 1)]
        first_seen = [sum(m.items_seen.values()) for m in members]
        # a restarted trainer, asked for one step more, resumes from its checkpoint: steps 0-1 are not asked again
        write_toml(training, {**tomllib.loads(training.read_text("utf-8")),
                              "training": {**tomllib.loads(training.read_text("utf-8"))["training"], "max_steps": 3}})
        _launch(training, tmp_path / "trainer-restart.log", server)
        # SIGTERM to the launcher mid-run: the ranks agree on one step boundary, the main rank checkpoints it
        write_toml(training, {**tomllib.loads(training.read_text("utf-8")),
                              "training": {**tomllib.loads(training.read_text("utf-8"))["training"], "max_steps": 40}})
        stopped_at = _launch_and_stop(training, tmp_path / "trainer-stopped.log", server, out, after_step=4)
    finally:
        for member in members:
            member.stop.set()
        for member in members:
            member.join(10)
            member.agent.close()
        server.stop()
    assert all(not m.errors for m in members), [m.errors[:2] for m in members]

    # the ranks agree, bit for bit, after each run, and they did train
    for rank0, rank1 in (first_run, [load_file(str(out / "ranks" / f"rank-{r}.safetensors")) for r in (0, 1)]):
        assert rank0.keys() == rank1.keys() and len(rank0) > 0
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
        assert any(float(rank0[k].abs().max()) > 0 for k in rank0 if "lora_B" in k)  # lora_B starts at zero
    assert json.loads((out / "ranks.json").read_text())["identical"] is True

    # one fused round per rank per step, each rank asking about its own completions only; the restart asked
    # for step 2 alone
    logs = {r: [json.loads(x) for x in (out / f"rounds-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    steps = stopped_at  # 2 + 1 + the steps until the stop, each asked once per rank
    for rank in (0, 1):
        assert [(x["step"], x["rank"], x["status"]) for x in logs[rank]] == [(s, rank, "fused") for s in range(steps)]
    assert len({x["round_id"] for r in (0, 1) for x in logs[r]}) == 2 * steps
    assert first_seen == [2 * 2 * 2] * 3  # 2 steps x 2 ranks x 2 completions
    for member in members:
        assert max(member.items_seen.values()) == 1  # no completion was put to a member twice
        assert sum(member.items_seen.values()) == steps * 2 * 2

    report = audit_report(config)
    assert report.ok, report.first_problem
    server_actions = actions(report)
    assert server_actions["trainer.round.requested"] == 2 * steps and server_actions["round.fused"] == 2 * steps
    assert server_actions["trainer.round.replayed"] == 0
    assert server_actions["round.collected"] == 1  # the service's own calibration round, once
    trainer = actions(report, "mor://testnet/trainer/trainer-1")  # the main rank's progress, for the status page
    assert (trainer["grpo.step"], trainer["training.finished"], trainer["training.stopped"]) == (steps, 2, 1), trainer
    assert (out / "grpo" / f"checkpoint-{steps}" / "adapter_model.safetensors").is_file()  # what a restart resumes


def _launch_and_stop(training: Path, log: Path, server: Any, out: Path, *, after_step: int) -> int:
    """Launch, SIGTERM the launcher once rank 0 has a round of ``after_step``; the step both ranks stopped at."""
    ranks = start_process("trainer", _command(training), log=log, cwd=REPO_ROOT,
                          env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    try:
        deadline = time.monotonic() + 240
        while not any(json.loads(x)["step"] >= after_step
                      for x in (out / "rounds-rank0.jsonl").read_text().splitlines()):
            assert ranks.alive() and time.monotonic() < deadline, ranks.log_tail(6000)
            time.sleep(0.2)
        ranks.proc.send_signal(signal.SIGTERM)
        ranks.proc.wait(timeout=120)
    finally:
        ranks.stop()
    verdict = json.loads((out / "ranks.json").read_text())
    assert verdict["identical"] is True, verdict
    ends = [json.loads(x)["step"] for x in (out / "rounds-rank1.jsonl").read_text().splitlines()]
    stopped = max(ends) + 1
    assert after_step < stopped < 40, (stopped, ranks.log_tail(3000) + server.log_tail(2000))
    return stopped


def _command(training: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO_ROOT / "deploy" / "accelerate" / "ddp.yaml"), "--num_processes", "2",
            "--main_process_port", str(free_port()), "-m", "mor_cli.main", "server", "train",
            "--config", str(training)]


def _launch(training: Path, log: Path, server: Any) -> None:
    """The shipped DDP config on 2 CPU processes (torchrun under Accelerate, gloo instead of NCCL)."""
    ranks = start_process("trainer", _command(training), log=log, cwd=REPO_ROOT,
                          env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    try:
        code = ranks.proc.wait(timeout=240)
    finally:
        ranks.stop()
    assert code == 0, ranks.log_tail(6000) + "\n--- server ---\n" + server.log_tail(3000)
