"""Group commit of submissions (issue 14 §6): many envelopes share one commit, and a receipt never precedes it.

The promise a member relies on: a signed receipt means the envelope is stored and its audit
entry is on disk. With group commit several envelopes share one transaction and one audit
fsync; these tests show the promise still holds — while a group's commit cannot complete, no
receipt of that group is handed out; and after ``kill -9`` in the middle of a stream of
concurrent submissions, every receipt an agent got has its row in the store and its entry,
with the cited leaf hash, in the log.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers.consortium import Agent, server_data, write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, start_server, write_server_config

from audit.merkle import leaf_hash
from audit.storage import ENTRIES
from crypto.canonical import canonical_json
from crypto.envelope import open_envelope, sign_plain_scores
from crypto.errors import IntegrityError
from crypto.signing import SigningKey
from server.audit_trail import AuditLogTrail
from server.ingest import DeferredNonce, GroupCommit, Submission
from server.state import StateStore
from wire.messages import Receipt, TaskItem, TaskPayload

pytestmark = pytest.mark.timeout(180)
PAYLOAD = TaskPayload(kind="score", prompts=[], items=[TaskItem(prompt_index=0, response="r")] * 3).model_dump()


def _entries(audit_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (audit_dir / ENTRIES).read_text("utf-8").splitlines()]


def _cited(receipt: Receipt, entries: list[dict]) -> bool:
    """The receipt's audit index holds a ``submission.accepted`` entry for its envelope, with the cited leaf hash."""
    if receipt.audit_index >= len(entries):
        return False
    entry = entries[receipt.audit_index]["entry"]
    return (leaf_hash(canonical_json(entry)).hex() == receipt.audit_leaf_sha256
            and entry["action"] == "submission.accepted"
            and entry["details"]["envelope_sha256"] == receipt.envelope_sha256)


def test_a_group_shares_one_commit_and_no_receipt_leaves_before_it(tmp_path: Path) -> None:
    # Prepare: one round with a task for each of 12 members, a real store, a real audit log
    db = tmp_path / "state.db"
    state = StateStore(f"sqlite:///{db}")
    audit = AuditLogTrail.open(tmp_path / "audit", SigningKey.generate(), origin="mor://t/server")
    server_key = SigningKey.generate()
    ingest = GroupCommit(state=state, audit=audit, signing_key=server_key)
    members = {f"mor://t/client/m{i}": SigningKey.generate() for i in range(12)}
    tasks = {m: (f"task-{i}", PAYLOAD) for i, m in enumerate(members)}
    state.create_round("score-r1", kind="score", n_items=3, deadline=time.time() + 60, now=time.time(),
                       task_payloads=tasks)

    def envelope(member: str, values: list[float]):  # type: ignore[no-untyped-def]
        return sign_plain_scores(values, signing_key=members[member], sender=member, round_id="score-r1",
                                 task_id=tasks[member][0])

    def verified(member: str, env) -> Submission:  # type: ignore[no-untyped-def]
        """What the route hands to the group commit: the envelope verified, its nonce not yet recorded."""
        nonce = DeferredNonce(state)
        opened = open_envelope(env, verify_key=members[member].verify_key(), nonces=nonce, expected_sender=member)
        task = state.task(tasks[member][0])
        assert task is not None and nonce.seen is not None
        return Submission(agent=member, task=task, envelope=env, opened=opened, nonce=nonce.seen, clipped=0,
                          now=time.time())

    def submit(member: str, env) -> Submission:  # type: ignore[no-untyped-def]
        return ingest.commit(verified(member, env))

    sent = {m: envelope(m, [0.1, 0.2, 0.3]) for m in members}
    # Execute: another connection holds SQLite's write lock, so the first group cannot commit
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with ThreadPoolExecutor(len(members)) as pool:
        futures = {m: pool.submit(submit, m, sent[m]) for m in members}
        time.sleep(1.0)
        # Assert: the leader wrote its group's audit entries first, yet no receipt left and no row exists
        assert audit.size() >= 1
        assert not any(f.done() for f in futures.values())
        assert state.count_submissions() == 0
        blocker.execute("ROLLBACK")
        done = {m: f.result(timeout=60) for m, f in futures.items()}
    blocker.close()
    assert all(d.outcome == "accepted" for d in done.values())
    assert ingest.groups <= 2  # 12 envelopes: the blocked leader's group, then everyone who queued meanwhile
    entries = _entries(tmp_path / "audit")
    for member, item in done.items():
        receipt = item.receipt
        assert receipt is not None
        server_key.verify_key().verify(base64.b64decode(receipt.signature_b64), receipt.signed_bytes())
        assert _cited(receipt, entries)
        row = state.submission(tasks[member][0])
        assert row is not None and Receipt.model_validate(row["receipt"]) == receipt
    # a replay is refused before the group (its nonce is stored); twins verified concurrently are sorted out in it
    first, second = list(members)[:2]
    with pytest.raises(IntegrityError):
        verified(first, sent[first])
    state.create_round("score-r2", kind="score", n_items=3, deadline=time.time() + 60, now=time.time(),
                       task_payloads={second: ("task-r2", PAYLOAD)})
    tasks[second] = ("task-r2", PAYLOAD)
    again, other = (sign_plain_scores([v], signing_key=members[second], sender=second, round_id="score-r2",
                                      task_id="task-r2") for v in (0.1, 0.2))
    twins = [verified(second, again), verified(second, again), verified(second, other)]
    assert [ingest.commit(t).outcome for t in twins] == ["accepted", "replay", "duplicate"]
    assert state.count_submissions() == len(members) + 1
    assert sum(e["entry"]["action"] == "submission.accepted" for e in _entries(tmp_path / "audit")) == len(members) + 1
    audit.close()


def test_after_kill_9_every_receipt_is_stored_and_in_the_log(tmp_path: Path) -> None:
    # Prepare: a real server process, 4 agents with 40 tasks each (tls-only: cheap envelopes, same commit path)
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml", mode="tls-only"),
                                 port=free_port())
    data = server_data(config)
    db = str(data["database_url"])
    receipts: list[Receipt] = []
    lock = threading.Lock()
    with start_server(config) as server:
        agents = [Agent.of(pki, f"m{i}", server.base_url) for i in range(4)]
        for agent in agents:
            assert agent.enrol().status_code == 200
        store = StateStore(db)
        tasks: dict[str, list[tuple[str, str]]] = {}
        for agent in agents:
            for k in range(40):
                round_id, task_id = f"score-{agent.party.name}-{k}", f"t-{agent.party.name}-{k}"
                store.create_round(round_id, kind="score", n_items=3, deadline=time.time() + 120, now=time.time(),
                                   task_payloads={agent.identity: (task_id, PAYLOAD)})
                tasks.setdefault(agent.identity, []).append((round_id, task_id))
        store.engine.dispose()

        def stream(agent: Agent) -> None:
            for round_id, task_id in tasks[agent.identity]:
                env = sign_plain_scores([0.1, 0.2, 0.3], signing_key=agent.key, sender=agent.identity,
                                        round_id=round_id, task_id=task_id).to_dict()
                try:
                    reply = agent.submit(task_id, env)
                except Exception:  # noqa: BLE001 - the server was killed under this request
                    return
                if reply.status_code == 200:
                    with lock:
                        receipts.append(Receipt.model_validate(reply.json()))

        threads = [threading.Thread(target=stream, args=(a,)) for a in agents]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(receipts) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()  # SIGKILL in the middle of the stream
        for thread in threads:
            thread.join(timeout=30)
        for agent in agents:
            agent.close()
    # Assert: a crash with submissions in flight, and each receipt is backed by a stored row and a logged entry
    assert 40 <= len(receipts) < 160, len(receipts)
    store = StateStore(db)
    entries = _entries(Path(data["audit_dir"]))
    for receipt in receipts:
        row = store.submission(receipt.task_id)
        assert row is not None and Receipt.model_validate(row["receipt"]) == receipt
        assert _cited(receipt, entries), receipt
    store.engine.dispose()


def test_a_round_closed_after_the_route_checked_its_task_gets_no_receipt(tmp_path: Path) -> None:
    """The coordinator may fuse a round without an answer still in flight: that answer must be
    refused as expired — no row, no receipt, and the task stays expired — never stored after the fact."""
    # Prepare: two members' tasks, each verified (as the route does) while the round is open
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    audit = AuditLogTrail.open(tmp_path / "audit", SigningKey.generate(), origin="mor://t/server")
    ingest = GroupCommit(state=state, audit=audit, signing_key=SigningKey.generate())
    members = {f"mor://t/client/m{i}": SigningKey.generate() for i in range(2)}
    tasks = {m: (f"task-{i}", PAYLOAD) for i, m in enumerate(members)}
    state.create_round("score-r1", kind="score", n_items=3, deadline=time.time() + 60, now=time.time(),
                       task_payloads=tasks)
    items = []
    for member, key in members.items():
        env = sign_plain_scores([0.1, 0.2, 0.3], signing_key=key, sender=member, round_id="score-r1",
                                task_id=tasks[member][0])
        nonce = DeferredNonce(state)
        opened = open_envelope(env, verify_key=key.verify_key(), nonces=nonce, expected_sender=member)
        task = state.task(tasks[member][0])
        assert task is not None and task.status == "pending" and nonce.seen is not None
        items.append(Submission(agent=member, task=task, envelope=env, opened=opened, nonce=nonce.seen,
                                clipped=0, now=time.time()))
    # Execute: the round closes (its open tasks expire) before the group commits
    state.close_round("score-r1", status="fused", outcome={})
    done = [ingest.commit(item) for item in items]
    # Assert: refused as expired, nothing stored, tasks stay expired; the nonces are spent all the same
    assert [d.outcome for d in done] == ["expired", "expired"]
    assert state.count_submissions() == 0
    assert all(state.task(t).status == "expired" for t, _ in tasks.values())  # type: ignore[union-attr]
    assert all(state.nonce_seen(*item.nonce[:2]) for item in items)
    # and the transaction's own guard: a store that skips the group's pre-check still refuses
    assert not state.record_submission(task_id="task-0", agent=items[0].agent, round_id="score-r1",
                                       envelope_sha256="ab" * 32, envelope={}, receipt={}, now=time.time())
    assert state.count_submissions() == 0
    audit.close()
