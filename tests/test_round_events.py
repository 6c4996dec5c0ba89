"""Rounds and long-polls woken by events, and each envelope's signature verified once (issue 14 §6).

* The coordinator waits with a 30 s store re-read interval, yet its round closes as soon as
  the members' envelopes are committed: it was woken by the commits, not by a timer.
* It fuses the envelopes the service verified, handed over in memory: a stored row edited
  after its commit does not reach the reward, and its signature is not checked again. The
  same edit on a row the coordinator did not get handed (written through another store object,
  as after a restart) is verified from the store and refused.
* A long-poll with a 30 s re-read interval gets its task as soon as the round is created.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from helpers.consortium import write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, write_server_config
from PIL import Image
from sqlalchemy import update
from starlette.testclient import TestClient

from corpus.types import Prompt
from crypto.canonical import canonical_json
from crypto.envelope import open_envelope, sign_plain_scores
from crypto.signing import SigningKey
from server.app import create_app
from server.audit_trail import AuditLogTrail
from server.config import load_server_config
from server.fusion import ScoreRange
from server.ingest import DeferredNonce, GroupCommit, Submission
from server.privacy_mode import privacy_mode_for
from server.rounds import RoundCoordinator, RoundPolicy
from server.router import UniformRouter
from server.state import StateStore
from server.state_tables import submissions
from server.wiring import open_server
from wire.messages import TaskItem, TaskPayload

pytestmark = pytest.mark.timeout(120)
MEMBERS = ("mor://t/client/alice", "mor://t/client/bob")
PROMPT = Prompt("p0", Image.new("RGB", (8, 8), (90, 30, 30)), "what colour?", "general", None)


class Service:
    """What the HTTP service does for members, minus HTTP: verify, then group-commit through ``state``."""

    def __init__(self, tmp: Path) -> None:
        self.db = f"sqlite:///{tmp / 'state.db'}"
        self.state = StateStore(self.db)
        self.audit = AuditLogTrail.open(tmp / "audit", SigningKey.generate(), origin="mor://t/server")
        self.keys = {m: SigningKey.generate() for m in MEMBERS}
        for member, key in self.keys.items():
            self.state.upsert_agent(member, signing_key_b64=base64.b64encode(key.verify_key().raw()).decode(),
                                    architecture="test", epsilon=1.0, delta=1e-6, privacy_report={}, now=time.time())
        self.privacy = privacy_mode_for("tls-only", scores=ScoreRange(-10, 10), audit=self.audit)

    def answer(self, state: StateStore, member: str, value: float) -> str:
        """``member`` takes its task from ``state``, signs ``value`` for every item, and the envelope is committed."""
        deadline = time.monotonic() + 30
        while (task := state.next_task(member, time.time())) is None:
            assert time.monotonic() < deadline, "no task"
            time.sleep(0.01)
        env = sign_plain_scores([value] * len(task.payload["items"]), signing_key=self.keys[member], sender=member,
                                round_id=task.round_id, task_id=task.task_id)
        nonce = DeferredNonce(state)
        opened = open_envelope(env, verify_key=self.keys[member].verify_key(), nonces=nonce, expected_sender=member)
        assert nonce.seen is not None
        ingest = GroupCommit(state=state, audit=self.audit, signing_key=SigningKey.generate())
        item = ingest.commit(Submission(agent=member, task=task, envelope=env, opened=opened, nonce=nonce.seen,
                                        clipped=0, now=time.time()))
        assert item.outcome == "accepted"
        return task.task_id

    def forge_row(self, task_id: str) -> None:
        """Rewrite a stored envelope behind the service's back (its digest column left as it was)."""
        row = self.state.submission(task_id)
        assert row is not None
        forged = dict(row["envelope"], scores=[9.0] * len(row["envelope"]["scores"]))
        with self.state.engine.begin() as conn:
            conn.execute(update(submissions).where(submissions.c.task_id == task_id)
                         .values(envelope=json.dumps(forged)))

    def round(self, answering: StateStore, *, poll_s: float) -> tuple[Any, float]:
        coordinator = RoundCoordinator(state=self.state, audit=self.audit, privacy=self.privacy,
                                       router=UniformRouter(list(MEMBERS)), show_progress=False,
                                       policy=RoundPolicy(quorum=2, deadline_s=20.0, poll_interval_s=poll_s),
                                       features=lambda ps: torch.zeros(len(ps), 4))

        def members() -> None:
            first = self.answer(answering, MEMBERS[0], 1.0)
            self.forge_row(first)  # committed and handed over; now the stored row says something else
            self.answer(answering, MEMBERS[1], 3.0)

        thread = threading.Thread(target=members)
        thread.start()
        started = time.monotonic()
        result = coordinator.run_round("score", [PROMPT], [(0, "a"), (0, "b")])
        elapsed = time.monotonic() - started
        thread.join(timeout=30)
        return result, elapsed


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path)
    yield s
    s.audit.close()


def test_round_woken_by_commits_fuses_the_verified_envelopes_not_the_edited_rows(service: Service) -> None:
    result, elapsed = service.round(service.state, poll_s=30.0)
    assert result.status == "fused" and set(result.agents_used) == set(MEMBERS)
    assert elapsed < 10.0  # the 30 s re-read never came into play
    assert result.rewards is not None and all(abs(r - 2.0) < 1e-6 for r in result.rewards)  # (1 + 3) / 2, not 9


def test_rows_not_handed_over_are_verified_from_the_store(service: Service) -> None:
    elsewhere = StateStore(service.db)  # another store object on the same database: no hand-over, no events
    result, _ = service.round(elsewhere, poll_s=0.1)
    assert result.status == "skipped" and result.agents_used == ()
    assert result.refused == {MEMBERS[0]: "stored envelope failed verification"}


def test_long_poll_gets_a_new_task_without_waiting_for_a_re_read(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=free_port())
    runtime = open_server(load_server_config(config))
    try:
        services = dataclasses.replace(runtime.services, poll_interval_s=30.0)
        alice = pki.issue("alice")
        der = x509.load_pem_x509_certificate(alice.cert.read_bytes()).public_bytes(Encoding.DER)
        inner = create_app(services)

        async def peer(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": {"client_cert_der": der}}}
            await inner(scope, receive, send)

        client = TestClient(peer, raise_server_exceptions=False)
        key = SigningKey.generate()
        report: dict[str, Any] = {"identity": alice.identity, "epsilon": 1.0, "delta": 1e-6, "accountant": "prv"}
        report["signature_b64"] = base64.b64encode(key.sign(canonical_json(report))).decode()
        enrolled = client.post("/v1/enrol", json={"signing_public_key_b64": base64.b64encode(key.verify_key().raw())
                                                  .decode(), "privacy_report": report, "architecture": "mlp"})
        assert enrolled.status_code == 200, enrolled.text
        replies: list[Any] = []
        poll = threading.Thread(target=lambda: replies.append(client.get("/v1/tasks/next", params={"wait": 20})))
        poll.start()
        time.sleep(0.5)  # the long-poll has read the store once and sleeps
        payload = TaskPayload(kind="score", prompts=[], items=[TaskItem(prompt_index=0, response="r")]).model_dump()
        issued = time.monotonic()
        services.state.create_round("score-e1", kind="score", n_items=1, deadline=time.time() + 60, now=time.time(),
                                    task_payloads={alice.identity: ("task-e1", payload)})
        poll.join(timeout=25)
        waited = time.monotonic() - issued
        assert replies and replies[0].status_code == 200 and replies[0].json()["task_id"] == "task-e1"
        assert waited < 5.0, waited
    finally:
        runtime.close()
