"""The HTTP service over real mutual TLS (uvicorn in a thread, real certs, real CKKS).

The audit log here is a small in-test trail (``ListAudit``) until the ``audit`` package is
wired in (server/wiring.py seams); the process-level tests (kill -9, `mor server serve`) come
with that wiring.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from helpers.pki import make_pki
from helpers.procs import free_port

from crypto.canonical import canonical_json
from crypto.ckks import CKKSKeyOwner
from crypto.envelope import seal_scores
from crypto.signing import SigningKey
from crypto.tls import server_ssl_context
from server.admission import Admission, RateLimiter, RevocationList
from server.app import create_app
from server.mtls import uvicorn_config
from server.services import AuditRecord, ServicePolicy, Services
from server.state import StateStore
from wire.messages import Receipt, TaskPayload


class ListAudit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, actor: str, action: str, data: Any) -> AuditRecord:
        self.entries.append((actor, action, dict(data)))
        leaf = hashlib.sha256(canonical_json([actor, action, dict(data)])).hexdigest()
        return AuditRecord(len(self.entries) - 1, leaf)

    def checkpoint(self) -> dict[str, Any]:
        return {"origin": "t", "size": len(self.entries), "root_sha256": "0" * 64, "timestamp": 0.0,
                "signature_b64": ""}

    def proof(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def size(self) -> int:
        return len(self.entries)

    def actions(self) -> list[str]:
        return [a for _, a, _ in self.entries]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("svc")
    pki = make_pki(tmp)
    owner = CKKSKeyOwner.generate()
    policy = ServicePolicy(consortium="testnet", digest="d" * 64, privacy_mode="ckks", max_epsilon=8.0,
                           max_delta=1e-5, max_body_bytes=2_000_000, max_items=64, requests_per_s=100, burst=100,
                           score_min=-10, score_max=10, out_of_range="refuse", allowed_identities=None)
    audit = ListAudit()
    state = StateStore(f"sqlite:///{tmp / 'state.db'}")
    services = Services(policy=policy, state=state, audit=audit, signing_key=SigningKey.generate(),
                        admission=Admission(consortium="testnet", revocations=RevocationList(pki.crl, pki.ca_cert),
                                            rate_limiter=RateLimiter(100, 100)),
                        public_context=owner.public_context, ckks=owner)
    port = free_port()
    ctx = server_ssl_context(pki.server.cert, pki.server.key, pki.ca_cert, pki.crl)
    server = uvicorn.Server(uvicorn_config(create_app(services), host="127.0.0.1", port=port, ssl_context=ctx))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield pki, services, audit, f"https://127.0.0.1:{port}", tmp
    server.should_exit = True
    thread.join(10)


def _enrol(url: str, party: Any, key: SigningKey, epsilon: float = 3.0) -> httpx.Response:
    report = {"identity": party.identity, "epsilon": epsilon, "delta": 1e-6, "accountant": "prv"}
    report["signature_b64"] = base64.b64encode(key.sign(canonical_json(report))).decode()
    body = {"signing_public_key_b64": base64.b64encode(key.verify_key().raw()).decode(),
            "privacy_report": report, "architecture": "mlp"}
    with httpx.Client(verify=party.client_context()) as http:
        return http.post(url + "/v1/enrol", json=body)


def test_enrol_task_submit_receipt_and_rejections(world: Any) -> None:
    pki, services, audit, url, _ = world
    alice, key = pki.issue("alice"), SigningKey.generate()
    assert _enrol(url, alice, key, epsilon=50.0).json()["code"] == "privacy_budget_exceeded"
    assert "reject.privacy_budget_exceeded" in audit.actions()
    assert _enrol(url, alice, key).status_code == 200
    http = httpx.Client(verify=alice.client_context(), timeout=30)
    assert http.get(url + "/v1/context").content == services.public_context.serialized
    assert http.get(url + "/v1/tasks/next", params={"wait": 0.3}).status_code == 204
    payload = TaskPayload(kind="score", prompts=[], items=[{"prompt_index": 0, "response": "a"}] * 3).model_dump()
    services.state.create_round("r1", kind="score", n_items=3, deadline=time.time() + 60, now=time.time(),
                                task_payloads={alice.identity: ("t1", payload)})
    task = http.get(url + "/v1/tasks/next", params={"wait": 2}).json()
    assert task["task_id"] == "t1" and len(task["items"]) == 3
    env = seal_scores([0.1, 0.2, 0.3], services.public_context, signing_key=key, sender=alice.identity,
                      round_id="r1", task_id="t1").to_dict()
    reply = http.post(url + "/v1/submissions", json={"task_id": "t1", "envelope": env})
    assert reply.status_code == 200, reply.text
    receipt = Receipt.model_validate(reply.json())
    services.signing_key.verify_key().verify(base64.b64decode(receipt.signature_b64), receipt.signed_bytes())
    again = http.post(url + "/v1/submissions", json={"task_id": "t1", "envelope": env})
    assert again.status_code == 200 and again.json() == reply.json()  # idempotent
    other = seal_scores([0.1, 0.2, 0.3], services.public_context, signing_key=key, sender=alice.identity,
                        round_id="r1", task_id="t1").to_dict()
    assert http.post(url + "/v1/submissions", json={"task_id": "t1", "envelope": other}).status_code == 409
    forged = dict(env, signature=base64.b64encode(b"\0" * 64).decode())
    services.state.create_round("r2", kind="score", n_items=3, deadline=time.time() + 60, now=time.time(),
                                task_payloads={alice.identity: ("t2", payload)})
    assert http.post(url + "/v1/submissions", json={"task_id": "t2", "envelope": forged}).json()["code"] == \
        "integrity_error"
    stale = seal_scores([0.1, 0.2, 0.3], services.public_context, signing_key=key, sender=alice.identity,
                        round_id="r2", task_id="t2", now=time.time() - 3600).to_dict()
    assert http.post(url + "/v1/submissions", json={"task_id": "t2", "envelope": stale}).status_code == 400
    short = seal_scores([0.1, 0.2], services.public_context, signing_key=key, sender=alice.identity,
                        round_id="r2", task_id="t2").to_dict()
    assert http.post(url + "/v1/submissions", json={"task_id": "t2", "envelope": short}).json()["code"] == \
        "wrong_length"
    replay = http.post(url + "/v1/submissions", json={"task_id": "t2", "envelope": short})
    assert replay.json()["code"] == "integrity_error"  # nonce already seen
    big = http.post(url + "/v1/submissions", content=b"x" * 3_000_000, headers={"content-type": "application/json"})
    assert big.status_code == 413
    assert {"reject.duplicate_submission", "reject.integrity_error", "reject.body_too_large",
            "submission.accepted"} <= set(audit.actions())
    page = http.get(url + "/status")
    assert page.status_code == 200 and "alice" in page.text


def test_tls_rejections_and_live_revocation(world: Any, tmp_path: Path) -> None:
    pki, _, audit, url, _ = world
    stranger = make_pki(tmp_path / "foreign").issue("mallory")
    with pytest.raises(httpx.HTTPError), httpx.Client(verify=stranger.client_context()) as http:
        http.get(url + "/v1/status")
    bob = pki.issue("bob")
    http = httpx.Client(verify=bob.client_context())
    assert http.get(url + "/v1/status").status_code == 200
    pki.revoke("bob")
    reply = http.get(url + "/v1/status")  # same keep-alive connection: the app re-reads the CRL
    assert reply.status_code == 403 and reply.json()["code"] == "certificate_revoked"
    assert "reject.certificate_revoked" in audit.actions()
    assert http.get(url + "/v1/tasks/next").status_code == 403
