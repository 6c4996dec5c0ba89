"""Crash and stop: ``kill -9`` then restart on the same store and log; ``mor server run`` on SIGTERM.

What a member relies on: a submission the server acknowledged with a signed receipt survives a
crash, a nonce once seen stays seen, and the receipt's audit index is provably in the log the
restarted server signs. What an operator relies on: SIGTERM stops the training run cleanly
(the round in flight is closed, the log gets its final checkpoint) and exits 0.
"""

from __future__ import annotations

import base64
import signal
import time
from pathlib import Path

import pytest
from helpers.consortium import Agent, actions, audit_report, issue_task, log_key, server_data, write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, start_server, start_server_run, write_server_config, write_toml
from sqlalchemy import select

from audit import verify_inclusion
from audit.wire_form import checkpoint_from_wire
from crypto.ckks import load_public_context
from crypto.envelope import seal_scores
from server.state import StateStore
from server.state_tables import rounds
from wire.messages import Receipt, SignedInclusionProof

pytestmark = pytest.mark.timeout(240)


def test_kill_9_then_restart_keeps_receipts_nonces_and_a_verifiable_log(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=free_port())
    db = str(server_data(config)["database_url"])
    with start_server(config) as server:
        alice = Agent.of(pki, "alice", server.base_url)
        assert alice.enrol().status_code == 200
        context = load_public_context(alice.http.get("/v1/context").content)
        (round_1, task_1), (round_2, task_2) = (issue_task(db, alice.identity, n_items=3) for _ in range(2))
        accepted = seal_scores([0.1, 0.2, 0.3], context, signing_key=alice.key, sender=alice.identity,
                               round_id=round_1, task_id=task_1).to_dict()
        refused = seal_scores([0.1, 0.2], context, signing_key=alice.key, sender=alice.identity,
                              round_id=round_2, task_id=task_2).to_dict()
        reply = alice.submit(task_1, accepted)
        assert reply.status_code == 200, reply.text
        receipt = Receipt.model_validate(reply.json())
        assert alice.submit(task_2, refused).json()["code"] == "wrong_length"  # its nonce is now spent
        alice.close()
        server.kill()
        assert server.proc.returncode == -signal.SIGKILL

    with start_server(config, log=tmp_path / "restarted.log") as server:
        alice = alice.reconnect(server.base_url)
        again = alice.submit(task_1, accepted)
        assert again.status_code == 200 and Receipt.model_validate(again.json()) == receipt
        replay = alice.submit(task_2, refused)
        assert (replay.status_code, replay.json()["code"]) == (400, "integrity_error")
        proof = SignedInclusionProof.model_validate(alice.http.get(f"/v1/audit/proof/{receipt.audit_index}").json())
        alice.close()
        assert server.stop() == 0

    server_key = log_key(config)
    server_key.verify(base64.b64decode(receipt.signature_b64), receipt.signed_bytes())  # raises if not the server's
    head = checkpoint_from_wire(proof.checkpoint.model_dump(), server_key)  # signed by the restarted server
    assert proof.leaf_sha256 == receipt.audit_leaf_sha256 and head.size > receipt.audit_index
    verify_inclusion(proof.leaf_sha256, proof.index, head.size, proof.path_sha256, head.root)
    report = audit_report(config)
    assert report.ok, report.first_problem
    assert report.uncovered == 0
    counts = actions(report)
    assert (counts["server.started"], counts["server.stopped"], counts["submission.accepted"]) == (2, 1, 1)
    assert counts["reject.integrity_error"] == 1


def test_server_run_stops_training_on_sigterm_and_closes_the_log(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=free_port())
    training = write_toml(tmp_path / "training.toml", {"training": {
        "model_path": str(tmp_path / "policy-model"), "output_dir": str(tmp_path / "out"), "quorum": 1,
        "deadline_s": 120, "enrol_timeout_s": 300, "n_calibration": 4}})
    server = start_server_run(config, training)
    try:
        alice = Agent.of(pki, "alice", server.base_url)
        assert alice.enrol().status_code == 200
        deadline, task = time.monotonic() + 90, None
        while task is None and time.monotonic() < deadline:  # the trainer sees alice, opens a calibration round
            reply = alice.http.get("/v1/tasks/next", params={"wait": 10})
            task = reply.json() if reply.status_code == 200 else None
        assert task is not None and task["kind"] == "calibrate" and len(task["items"]) == 4, server.log_text()
        alice.close()
    finally:
        code = server.stop(timeout=60)
    assert code == 0, server.log_text()

    report = audit_report(config)
    assert report.ok, report.first_problem
    assert report.uncovered == 0
    counts = actions(report, "server")
    for action in ("server.started", "training.started", "round.opened", "training.stopped", "round.abandoned",
                   "server.stopped"):
        assert counts[action] == 1, (action, counts)
    store = StateStore(str(server_data(config)["database_url"]))
    with store.engine.connect() as conn:
        status = conn.execute(select(rounds.c.status).where(rounds.c.round_id == task["round_id"])).scalar_one()
    assert status == "skipped"
    assert store.task(task["task_id"]).status == "expired"  # type: ignore[union-attr]  # late envelopes: 410
