"""Server side of the lifetime privacy budget: enrolment composes the signed reports' ledgers and refuses
past ``lifetime_epsilon`` or when a member's ledger drops a training the server saw (in-process app)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from helpers.consortium import write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, write_server_config
from starlette.testclient import TestClient

from crypto.canonical import canonical_json
from crypto.signing import SigningKey
from policies.lifetime import compose_epsilon
from server.app import create_app
from server.config import load_server_config
from server.wiring import open_server

RUN = {"noise_multiplier": 1.5, "sample_rate": 0.1, "steps": 30}


def _report(identity: str, key: SigningKey, name: str, prior: list[dict[str, Any]]) -> tuple[dict[str, Any], dict]:
    body: dict[str, Any] = {"identity": identity, "epsilon": 2.0, "delta": 1e-6, "accountant": "rdp", **RUN,
                            "created_at": "2026-11-29T12:00:00+00:00", "prior_runs": prior,
                            "local_report_sha256": hashlib.sha256(name.encode()).hexdigest()}
    body["signature_b64"] = base64.b64encode(key.sign(canonical_json(body))).decode()
    run = {k: body[k] for k in ("epsilon", "delta", "created_at", *RUN)}
    run["report_sha256"] = body["local_report_sha256"]
    return body, run


@pytest.fixture()
def app(tmp_path: Path):
    pki = make_pki(tmp_path)
    runtime = open_server(load_server_config(write_server_config(tmp_path, pki, policy=write_policy(
        tmp_path / "policy.toml"), port=free_port())))
    alice = pki.issue("alice")
    der = x509.load_pem_x509_certificate(alice.cert.read_bytes()).public_bytes(Encoding.DER)

    def client(limit: float | None) -> TestClient:
        policy = dataclasses.replace(runtime.services.policy, lifetime_epsilon=limit, accountant="rdp")
        services = dataclasses.replace(runtime.services, policy=policy)
        inner = create_app(services)

        async def peer(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": {"client_cert_der": der}}}
            await inner(scope, receive, send)

        return TestClient(peer, raise_server_exceptions=False)

    yield client, alice.identity, runtime.services.policy.max_delta


def _enrol(client: TestClient, key: SigningKey, report: dict[str, Any]):
    return client.post("/v1/enrol", json={"signing_public_key_b64": base64.b64encode(key.verify_key().raw()).decode(),
                                          "privacy_report": report, "architecture": "mlp"})


def test_enrolment_past_the_lifetime_is_refused(app) -> None:
    make, identity, delta = app  # the server composes at the policy's max_delta
    key = SigningKey.generate()
    one = compose_epsilon([(RUN["noise_multiplier"], RUN["sample_rate"], RUN["steps"])], delta=delta,
                          accountant="rdp")[0]
    client = make(limit=one * 1.2)
    first, run = _report(identity, key, "first", [])
    assert _enrol(client, key, first).status_code == 200
    second, _ = _report(identity, key, "second", [run])
    reply = _enrol(client, key, second)
    assert reply.status_code == 403 and reply.json()["code"] == "lifetime_budget_exceeded"
    assert "2 DP training(s) compose to lifetime epsilon" in reply.json()["message"]
    assert _enrol(make(limit=one * 3), key, second).status_code == 200  # a looser lifetime admits both


def test_a_ledger_that_drops_an_enrolled_training_is_refused(app) -> None:
    make, identity, _ = app
    key = SigningKey.generate()
    client = make(limit=None)
    first, _ = _report(identity, key, "first", [])
    assert _enrol(client, key, first).status_code == 200
    assert _enrol(client, key, first).status_code == 200  # the same report again is fine
    wiped, _ = _report(identity, key, "after-wiping-state", [])
    reply = _enrol(client, key, wiped)
    assert reply.status_code == 403 and reply.json()["code"] == "privacy_ledger_gap"
