"""What process-level server tests share: a policy file, an agent speaking HTTP, the real audit log.

    policy = write_policy(tmp / "policy.toml", mode="ckks")
    alice = Agent.of(pki, "alice", server.base_url)          # a fresh certificate and signing key
    assert alice.enrol().status_code == 200
    task_id = issue_task(server_db(config), alice.identity, n_items=3)   # as the coordinator would
    report = audit_report(config)                              # audit.verify_log with the server's key
    assert actions(report, alice.identity)["submission.accepted"] == 1

Everything is real: certificates from the test CA, mutual TLS 1.3, Ed25519-signed privacy
reports and envelopes, the server's SQLite store (shared with the server process, WAL) and
its audit log, verified with the key the server signs with.
"""

from __future__ import annotations

import base64
import time
import tomllib
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from audit import VerificationReport, verify_log
from crypto.canonical import canonical_json
from crypto.signing import SigningKey, VerifyKey
from helpers.pki import Party, TestPKI
from server.state import StateStore
from sim.harness import write_toml
from wire.messages import TaskItem, TaskPayload


def write_policy(path: Path, *, consortium: str = "testnet", mode: str = "ckks", pilot: bool | None = None,
                 admission: dict[str, object] | None = None, scores: dict[str, object] | None = None,
                 limits: dict[str, object] | None = None) -> Path:
    """A valid consortium policy (quorum 1, small vectors); tls-only makes it a pilot."""
    return write_toml(Path(path), {
        "admission": admission or {"allow_all_certified": True},
        "privacy": {"mode": mode, "max_epsilon": 8.0, "max_delta": 1e-5},
        "rounds": {"quorum": 1, "deadline_s": 60, "group_size": 2, "prompts_per_round": 2},
        "scores": scores or {"min": -10.0, "max": 10.0, "out_of_range": "refuse", "max_vector_length": 64},
        "audit": {"retention_days": 30, "checkpoint_every": 16},
        "limits": limits or {"max_body_bytes": 2_000_000, "requests_per_minute": 6000},
    }, top={"consortium": consortium, "pilot": pilot if pilot is not None else mode == "tls-only"})


@dataclass
class Agent:
    """A client agent's side of the wire: certificate, Ed25519 key, one keep-alive mTLS client."""

    party: Party
    key: SigningKey
    http: httpx.Client

    @classmethod
    def of(cls, pki: TestPKI, name: str, base_url: str) -> Agent:
        party = pki.issue(name)
        return cls(party, SigningKey.generate(), httpx.Client(base_url=base_url, verify=party.client_context(),
                                                              timeout=60))

    def reconnect(self, base_url: str) -> Agent:
        """The same agent (certificate, key) on a new connection, e.g. after a server restart."""
        self.http.close()
        return Agent(self.party, self.key, httpx.Client(base_url=base_url, verify=self.party.client_context(),
                                                        timeout=60))

    @property
    def identity(self) -> str:
        return self.party.identity

    def enrol(self, epsilon: float = 3.0, *, noise_source: str | None = None) -> httpx.Response:
        """POST /v1/enrol with a privacy report signed by this agent's key."""
        report: dict[str, Any] = {"identity": self.identity, "epsilon": epsilon, "delta": 1e-6, "accountant": "prv"}
        if noise_source is not None:
            report["noise_source"] = noise_source
        report["signature_b64"] = base64.b64encode(self.key.sign(canonical_json(report))).decode()
        return self.http.post("/v1/enrol", json={
            "signing_public_key_b64": base64.b64encode(self.key.verify_key().raw()).decode(),
            "privacy_report": report, "architecture": "mlp"})

    def submit(self, task_id: str, envelope: dict[str, Any]) -> httpx.Response:
        return self.http.post("/v1/submissions", json={"task_id": task_id, "envelope": envelope})

    def close(self) -> None:
        self.http.close()


def server_data(config: Path) -> dict[str, Any]:
    """The ``[server]`` table of a server TOML."""
    return dict(tomllib.loads(Path(config).read_text("utf-8"))["server"])


def issue_task(database_url: str, agent: str, *, n_items: int, deadline_s: float = 120.0) -> tuple[str, str]:
    """Open a one-task score round for ``agent`` in the server's store, as the coordinator does: (round, task)."""
    round_id, task_id = f"score-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    items = [TaskItem(prompt_index=0, response=f"answer {i}") for i in range(n_items)]
    payload = TaskPayload(kind="score", prompts=[], items=items).model_dump()
    store = StateStore(database_url)
    try:
        store.create_round(round_id, kind="score", n_items=n_items, deadline=time.time() + deadline_s,
                           now=time.time(), task_payloads={agent: (task_id, payload)})
    finally:
        store.engine.dispose()
    return round_id, task_id


def enrol_and_submit(agent: Agent, database_url: str) -> tuple[str, dict[str, Any], httpx.Response]:
    """Enrol ``agent``, issue it one 3-item score task and submit a sealed envelope: (task_id, envelope, reply)."""
    from crypto.ckks import load_public_context
    from crypto.envelope import seal_scores

    assert agent.enrol().status_code == 200
    context = load_public_context(agent.http.get("/v1/context").content)
    round_id, task_id = issue_task(database_url, agent.identity, n_items=3)
    envelope = seal_scores([0.1, 0.2, 0.3], context, signing_key=agent.key, sender=agent.identity,
                           round_id=round_id, task_id=task_id).to_dict()
    return task_id, envelope, agent.submit(task_id, envelope)


def log_key(config: Path, table: str = "server") -> VerifyKey:
    """The audit log's public key, taken from the party's own signing key file (out of band)."""
    section = tomllib.loads(Path(config).read_text("utf-8"))[table]
    return SigningKey.load(section["signing_key"]).verify_key()


def audit_report(config: Path, table: str = "server", *, live: bool = False) -> VerificationReport:
    """``audit.verify_log`` of the party's audit directory with its signing key.

    ``live``: the party is still running, so its newest entries may not be sealed by a signed
    checkpoint yet (``allow_unsealed_tail``); a stopped party's log must be sealed whole.
    """
    section = tomllib.loads(Path(config).read_text("utf-8"))[table]
    return verify_log(section["audit_dir"], log_key(config, table), allow_unsealed_tail=live)


def actions(report: VerificationReport, actor: str | None = None) -> Counter[str]:
    """Audit actions (all actors, or one) -> how many entries."""
    counts: Counter[str] = Counter()
    for who, per_action in report.actions_by_actor.items():
        if actor is None or who == actor:
            counts.update(per_action)
    return counts
