"""The agent against a real ``mor server serve`` process over mutual TLS on loopback.

One DP-trained head-only reward model per agent (60 private pairs, built by ``mor client
train``), real CKKS sealing, tasks created in the server's own StateStore as the coordinator
does, receipts checked (signature + inclusion proof against the server's signed checkpoint)
and the agent's own audit log verified.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.consortium import audit_report, log_key, server_data, write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, start_agent, start_server, write_server_config

from audit import verify_log
from client_agent.agent import Agent
from client_agent.config import load_agent_config
from client_agent.errors import ServerUnreachableError
from client_agent.ledger import TaskLedger
from client_agent.receipts import verify_receipt_inclusion
from corpus.builders import build_calibration_set, build_client_pairs
from corpus.store import save_pairs
from crypto.signing import SigningKey
from mor_cli.main import main
from server.rounds import prompt_payload
from server.state import StateStore
from wire.messages import Receipt, SignedInclusionProof, TaskItem, TaskPayload

pytestmark = pytest.mark.timeout(240)
CANDIDATES = build_calibration_set(12, seed=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """CA, pilot ckks policy, one server config, trained agents alice and bob (their configs)."""
    tmp = tmp_path_factory.mktemp("agents")
    pki = make_pki(tmp)
    policy = write_policy(tmp / "policy.toml", mode="ckks", pilot=True)
    port = free_port()
    server_config = write_server_config(tmp, pki, policy=policy, port=port)
    save_pairs(build_client_pairs("medical", 60, seed=0), tmp / "data")
    configs = {}
    for name in ("alice", "bob"):
        party = pki.issue(name)
        out = tmp / f"{name}.toml"
        assert main(["client", "init-config", "--out", str(out), "--server-url", f"https://127.0.0.1:{port}",
                     "--server-identity", pki.server.identity, "--policy", str(policy), "--cert", str(party.cert),
                     "--key", str(party.key), "--ca", str(pki.ca_cert), "--crl", str(pki.crl),
                     "--data-dir", str(tmp / "data"), "--state-dir", str(tmp / f"{name}-state"),
                     "--epsilon", "6", "--delta", "1e-5", "--insecure-pilot"]) == 0
        text = out.read_text().replace("params = {  }", "params = { hidden = 16 }")
        text = text.replace("epochs = 5", "epochs = 2").replace("batch_size = 64", "batch_size = 30")
        text = text.replace("retry_base_s = 0.5", "retry_base_s = 0.2")
        text = text.replace("retry_max_s = 30.0", "retry_max_s = 1.0")
        text = text.replace("max_items_per_task = 1024", "max_items_per_task = 8")
        out.write_text(text.replace("max_items_per_day = 100000", "max_items_per_day = 12"))
        with pytest.warns(UserWarning):
            assert main(["client", "train", "--config", str(out), "--quiet"]) == 0
        configs[name] = out
    return {"pki": pki, "server_config": server_config, "configs": configs, "tmp": tmp}


def _issue(database_url: str, agent: str, n_items: int, deadline_s: float = 120.0) -> tuple[str, str]:
    """One score round with one task for ``agent``: real prompt images and candidate answers."""
    round_id, task_id = f"score-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    prompts = [prompt_payload(p) for p, _ in CANDIDATES[:3]]
    items = [{"prompt_index": i % 3, "response": CANDIDATES[i % 12][1] + f" ({i})"} for i in range(n_items)]
    store = StateStore(database_url)
    try:
        store.create_round(round_id, kind="score", n_items=n_items, deadline=time.time() + deadline_s, now=time.time(),
                           task_payloads={agent: (task_id, TaskPayload(kind="score", prompts=prompts,
                                                                       items=items).model_dump())})
    finally:
        store.engine.dispose()
    return round_id, task_id


def _wait(condition: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def _ledger_status(config: Path, task_id: str) -> str | None:
    with TaskLedger.open(load_agent_config(config, check_policy=False).ledger_path) as ledger:
        entry = ledger.get(task_id)
    return entry.status if entry else None


def test_agent_process_serves_tasks_keeps_verifiable_receipts_and_stops_on_sigterm(world: dict[str, Any]) -> None:
    config_path, server_config = world["configs"]["alice"], world["server_config"]
    config = load_agent_config(config_path, check_policy=False)
    identity = config.identity()
    log = world["tmp"] / "alice-run.log"
    agent = start_agent(config_path, log=log)  # the agent starts first: it must retry until the server is up
    try:
        _wait(lambda: b"retry" in log.read_bytes(), 60, "a connection retry", log)
        with start_server(server_config) as server:
            db = server_data(server_config)["database_url"]
            store = StateStore(db)
            _wait(lambda: store.agent(identity) is not None, 60, "enrolment", log)
            tasks = {}
            # a refused task stays open on the server (no decline endpoint) and is re-delivered, oldest
            # first, until its deadline: refused ones get short deadlines so the queue moves on
            plan = (("first", 4, 120), ("oversized", 9, 3), ("second", 6, 120), ("over_cap", 4, 3))
            for label, n, deadline_s in plan:
                tasks[label] = _issue(db, identity, n, deadline_s)[1]
                _wait(lambda t=tasks[label]: _ledger_status(config_path, t) in ("receipted", "refused"), 90,
                      f"task {label}", log)
            started = time.monotonic()
            agent.proc.send_signal(signal.SIGTERM)  # it is now in a 20 s long poll
            assert agent.wait(30) == 0, log.read_text()[-3000:]
            assert time.monotonic() - started < 15  # the long poll was abandoned, not waited out
            summary = json.loads(log.read_text().strip().splitlines()[-1])
            assert summary == {"stopped": "signal", "receipted": 2, "refused": 2, "abandoned": 0, "resubmitted": 0}
            assert {label: _ledger_status(config_path, t) for label, t in tasks.items()} == {
                "first": "receipted", "oversized": "refused", "second": "receipted", "over_cap": "refused"}
            assert store.submission(tasks["oversized"]) is None and store.submission(tasks["over_cap"]) is None

            key = SigningKey.load(config.signing_key_path).verify_key()
            report = verify_log(config.audit_dir, key)
            assert report.ok, report.problems
            raw_lines = (config.audit_dir / "entries.jsonl").read_text().splitlines()
            lines = [json.loads(line)["entry"] for line in raw_lines]
            refusals = {e["task_id"]: e["details"]["code"] for e in lines if e["action"] == "task.refused"}
            assert refusals == {tasks["oversized"]: "task_too_large", tasks["over_cap"]: "daily_cap"}
            receipts = [Receipt.model_validate(e["details"]["receipt"]) for e in lines
                        if e["action"] == "receipt.stored"]
            assert sorted(r.task_id for r in receipts) == sorted([tasks["first"], tasks["second"]])
            assert [e["action"] for e in lines][-1] == "agent.stopped"

            server_key = log_key(server_config)  # out of band: the server's signing key
            auditor = world["pki"].issue("auditor-a", "auditor")
            with httpx.Client(base_url=server.base_url, verify=auditor.client_context(), timeout=30) as http:
                for receipt in receipts:
                    assert store.submission(receipt.task_id)["envelope_sha256"] == receipt.envelope_sha256  # type: ignore[index]
                    raw = http.get(f"/v1/audit/proof/{receipt.audit_index}").json()
                    proof = SignedInclusionProof.model_validate(raw)
                    verify_receipt_inclusion(receipt, proof, server_key)
            store.engine.dispose()
        counts = audit_report(server_config).actions_by_actor[identity]
        assert counts["agent.enrolled"] == 1 and counts["submission.accepted"] == 2
    finally:
        agent.kill()


def test_crash_after_sealing_resubmits_the_same_envelope(world: dict[str, Any]) -> None:
    config = load_agent_config(world["configs"]["bob"], check_policy=False)
    network = config.network.model_copy(update={"max_attempts": 2, "poll_wait_s": 1.0})
    config = config.model_copy(update={"network": network})
    identity, server_config = config.identity(), world["server_config"]
    server = start_server(server_config)
    db = server_data(server_config)["database_url"]
    agent = Agent.open(config)
    try:
        session = agent.enrol()
        calibration = [TaskItem(prompt_index=i, response=a) for i, (_, a) in enumerate(CANDIDATES[:6])]
        agent.calibrate(replace(session, enrolment=session.enrolment.model_copy(update={
            "calibration": calibration, "calibration_prompts": [prompt_payload(p) for p, _ in CANDIDATES[:6]]})))
        store = StateStore(db)
        stored = json.loads(store.agent(identity)["calibration"])  # type: ignore[index]
        assert stored["n"] == 6 and stored["std"] > 0
        _, task_id = _issue(db, identity, 3)
        task = agent.channel.next_task(5)
        assert task is not None and task.task_id == task_id
        server.kill()  # the server dies between our scoring and our submission
        with pytest.raises(ServerUnreachableError, match="gave up after 2 attempts"):
            agent.handle(task, session)
        [sealed] = agent.ledger.pending()
    finally:
        agent.close()  # the agent goes down too; only the ledger remembers

    with start_server(server_config) as server:
        agent = Agent.open(config)
        try:
            summary = agent.run(max_tasks=0, install_signals=False)  # enrol, resubmit, stop
            assert summary.resubmitted == 1 and summary.receipted == 1
            row = store.submission(task_id)
            assert row is not None and row["envelope"] == sealed.envelope  # same bytes, same nonce
            agent.handle(task, session)  # delivered again: never scored twice
            assert [e.status for e in agent.ledger.entries()] == ["receipted"]
        finally:
            agent.close()
        store.engine.dispose()
    server_counts = audit_report(server_config).actions_by_actor[identity]
    assert server_counts["submission.accepted"] == 1 and "reject.duplicate_submission" not in server_counts
    assert verify_log(config.audit_dir, SigningKey.load(config.signing_key_path).verify_key()).ok
