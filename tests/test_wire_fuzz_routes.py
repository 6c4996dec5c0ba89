"""Every bad input is a clean, audited 4xx — on every route of the server and of the key holder.

The apps are the real ones (``open_server`` / ``open_keyholder`` from TOML configs: real
SQLite store, real audit log, real CKKS keys), driven in process through ASGI. The caller's
identity comes from its certificate exactly as :class:`server.mtls.MutualTLSProtocol` hands
it over (``scope["extensions"]["tls"]``), so the gate, admission and roles are the real ones.

Requests are generated from each app's own OpenAPI schema (:mod:`helpers.openapi_fuzz`) and
from valid signed bodies (an envelope for a live task, a key binding, a sealed vector), with
one hostile change each: ``10**400``, ``NaN``, lone surrogates, 64 KiB+ strings and keys.
What a user cares about, per request: never a 5xx, the reply is an ``ErrorBody``, and the
refusal is in the audit log (``reject.<code>``) — and at the end each log verifies.
"""

from __future__ import annotations

import base64
import dataclasses
import time
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI
from helpers.consortium import write_policy
from helpers.openapi_fuzz import FuzzRequest, encode, operations, requests_for, single_mutations
from helpers.pki import Party, TestPKI, make_pki
from helpers.procs import free_port, write_keyholder_config, write_server_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from audit import verify_log
from crypto.canonical import canonical_json
from crypto.envelope import seal_scores
from crypto.key_binding import bind_signing_key
from crypto.signing import SigningKey
from server.app import create_app
from server.config import load_server_config
from server.keyholder.app import create_keyholder_app
from server.keyholder.config import load_keyholder_config
from server.services import AuditRecord
from server.trainer_rounds import TrainerRounds
from server.wiring import open_keyholder, open_server
from sim.harness import write_toml
from wire.messages import ErrorBody, TaskItem, TaskPayload

EXAMPLES_PER_ROUTE = 100  # 17 server + 4 key-holder routes: about 30 s in all on 2 shared cores
FUZZ = settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


class RecordingAudit:
    """The real audit trail, remembering which actions were recorded (to check each refusal was)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.actions = inner, list[str]()

    def record(self, actor: str, action: str, data: Mapping[str, Any]) -> AuditRecord:
        record: AuditRecord = self.inner.record(actor, action, data)
        self.actions.append(action)
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Peer:
    """Wraps an app so each request carries the certificate of ``self.party`` (None: no certificate)."""

    def __init__(self, app: FastAPI, party: Party | None) -> None:
        self.app, self.party = app, party

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.party is not None:
            der = x509.load_pem_x509_certificate(self.party.cert.read_bytes()).public_bytes(Encoding.DER)
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": {"client_cert_der": der}}}
        await self.app(scope, receive, send)


@dataclasses.dataclass
class Target:
    """One app under test, its audit recorder and the valid material its strategies start from."""

    client: TestClient
    peer: Peer
    audit: RecordingAudit
    spec: dict[str, Any]
    valid: dict[str, list[dict[str, Any]]]  # route path -> valid bodies (signed where they must be)
    path_values: dict[str, st.SearchStrategy[str]]
    envelopes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # task id -> a valid one


def send(target: Target, request: FuzzRequest) -> None:
    """One request; fails the test unless the answer is a success or a clean, audited refusal."""
    before = len(target.audit.actions)
    headers = {"content-type": "application/json"} if request.content is not None else {}
    reply = target.client.request(request.method, request.url, content=request.content, headers=headers)
    assert reply.status_code < 500, f"{request!r} -> {reply.status_code} {reply.text[:500]}"
    if reply.status_code >= 400:
        error = ErrorBody.model_validate_json(reply.content)
        assert target.audit.actions[before:][-1:] == [f"reject.{error.code}"], f"{request!r}: refusal not audited"


def _der_agent(pki: TestPKI, name: str) -> tuple[Party, SigningKey]:
    return pki.issue(name), SigningKey.generate()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("server")
    policy = write_policy(tmp / "policy.toml", limits={"max_body_bytes": 2_000_000, "requests_per_minute": 1_000_000})
    runtime = open_server(load_server_config(write_server_config(tmp, pki, policy=policy, port=free_port())))
    audit = RecordingAudit(runtime.services.audit)
    services = dataclasses.replace(runtime.services, audit=audit, long_poll_max_s=0.05)
    app = create_app(services)
    app.state.trainer_rounds = TrainerRounds(audit=audit, deadline_s=1.0)  # never ready: no round runs mid-fuzz
    alice, key = _der_agent(pki, "alice")
    peer = Peer(app, alice)
    client = TestClient(peer, raise_server_exceptions=False)
    report: dict[str, Any] = {"identity": alice.identity, "epsilon": 3.0, "delta": 1e-6, "accountant": "prv"}
    report["signature_b64"] = base64.b64encode(key.sign(canonical_json(report))).decode()
    enrol = {"signing_public_key_b64": base64.b64encode(key.verify_key().raw()).decode(),
             "privacy_report": report, "architecture": "mlp"}
    assert client.post("/v1/enrol", json=enrol).status_code == 200
    context = services.privacy.public_context
    assert context is not None
    submissions: list[dict[str, Any]] = []
    for i in range(9):  # live tasks, so hostile envelopes get past "which task?" (the last kept out of the pool)
        round_id, task_id = f"score-fuzz{i}", f"t-fuzz{i}"
        payload = TaskPayload(kind="score", prompts=[], items=[TaskItem(prompt_index=0, response="a")] * 2)
        services.state.create_round(round_id, kind="score", n_items=2, deadline=time.time() + 3600, now=time.time(),
                                    task_payloads={alice.identity: (task_id, payload.model_dump())})
        envelope = seal_scores([0.5, -0.5], context, signing_key=key, sender=alice.identity, round_id=round_id,
                               task_id=task_id)
        submissions.append({"task_id": task_id, "envelope": envelope.to_dict()})
    pool = submissions[:-1]
    valid: dict[str, list[dict[str, Any]]] = {
        "/v1/enrol": [enrol], "/v1/submissions": pool, "/v1/calibration": [{"mean": 0.1, "std": 1.5, "n": 8}],
        "/v1/tasks/{task_id}/decline": [{"code": "local_policy", "reason": "not my domain"}],
        "/v1/trainer/rounds": [{"run_id": "r1", "step": 0, "rank": 0, "prompt_ids": ["p0"],
                                "items": [{"prompt_index": 0, "response": "a"}]}],
        "/v1/trainer/steps": [{"run_id": "r1", "step": 1, "reward": 0.5, "kl": 0.01, "reason": "x"}]}
    yield Target(client, peer, audit, app.openapi(), valid,
                 path_values={"task_id": st.sampled_from([s["task_id"] for s in pool]) | st.text(max_size=20)},
                 envelopes={s["task_id"]: s["envelope"] for s in submissions})
    client.close()
    runtime.close()
    assert verify_log(runtime.config.server.audit_dir, runtime.services.signing_key.verify_key()).ok


@pytest.fixture(scope="module")
def keyholder(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("keyholder")
    policy_path = write_policy(tmp / "policy.toml", mode="fused-only")
    policy = tomllib.loads(policy_path.read_text("utf-8"))
    policy["privacy"]["public_rounds_per_agent"] = True
    write_toml(policy_path, {k: v for k, v in policy.items() if isinstance(v, dict)},
               top={k: v for k, v in policy.items() if not isinstance(v, dict)})
    config = load_keyholder_config(write_keyholder_config(tmp, pki, port=free_port(), policy=str(policy_path),
                                                          requests_per_s=100_000.0))
    runtime = open_keyholder(config)
    audit = RecordingAudit(runtime.services.audit)
    app = create_keyholder_app(dataclasses.replace(runtime.services, audit=audit))
    peer = Peer(app, pki.server)
    client = TestClient(peer, raise_server_exceptions=False)
    owner = runtime.services.owner
    bob, key = _der_agent(pki, "bob")
    binding = bind_signing_key(key.verify_key(), cert_pem=bob.cert.read_bytes(), tls_key_pem=bob.key.read_bytes())
    agent_bodies = [{"envelope": seal_scores([0.25, 1.0], owner.public_context, signing_key=key, sender=bob.identity,
                                             round_id=f"calibrate-{i}", task_id=f"c{i}").to_dict(),
                     "key_binding": binding} for i in range(3)]
    fused = {"round_id": "score-1", "sealed": owner.public_context.encrypt([0.5, 2.0]).to_dict()}
    yield Target(client, peer, audit, app.openapi(), {"/v1/decrypt-agent": agent_bodies, "/v1/decrypt-fused": [fused]},
                 path_values={})
    client.close()
    runtime.close()
    assert verify_log(config.keyholder.audit_dir, SigningKey.load(config.keyholder.signing_key).verify_key()).ok


def _fuzz_every_route(target: Target, callers: list[Party | None]) -> list[str]:
    names = []
    for op in operations(target.spec):
        valid = target.valid.get(op.path)
        strategy = requests_for(op, target.spec, body=st.sampled_from(valid) if valid else None,
                                path_values=target.path_values)

        @FUZZ
        @given(request=strategy, caller=st.sampled_from(callers))
        def run(request: FuzzRequest, caller: Party | None) -> None:
            target.peer.party = caller
            send(target, request)

        run()
        names.append(op.name)
    target.peer.party = callers[0]
    return names


def test_every_server_route_answers_hostile_input_with_an_audited_4xx(server: Target, pki: TestPKI) -> None:
    alice, audrey = server.peer.party, pki.issue("audrey", "auditor")  # the auditor reaches the range parsing
    trainer = pki.issue("tessa", "trainer")  # the trainer reaches the rounds' and steps' own checks
    fuzzed = _fuzz_every_route(server, [alice, alice, alice, pki.issue("carol"), pki.server, audrey, audrey, trainer,
                                        trainer, None])
    assert {"POST /v1/enrol", "POST /v1/submissions", "POST /v1/calibration", "GET /v1/tasks/next",
            "POST /v1/tasks/{task_id}/decline", "GET /v1/audit/proof/{index}", "GET /v1/audit/entries",
            "GET /v1/audit/checkpoints", "GET /v1/audit/consistency", "GET /v1/privacy-reports",
            "POST /v1/trainer/rounds", "GET /v1/trainer/rounds/{run_id}/{step}/{rank}", "POST /v1/trainer/steps",
            "GET /v1/trainer/run"} <= set(fuzzed)


def test_every_key_holder_route_answers_hostile_input_with_an_audited_4xx(keyholder: Target, pki: TestPKI) -> None:
    fuzzed = _fuzz_every_route(keyholder, [pki.server, pki.server, pki.issue("dave"), None])
    assert {"POST /v1/decrypt-fused", "POST /v1/decrypt-agent", "GET /v1/context"} <= set(fuzzed)


@pytest.mark.parametrize("which", ["server", "keyholder"])
def test_each_hostile_value_at_each_place_of_each_valid_body_is_refused_cleanly(which: str,
                                                                                request: pytest.FixtureRequest) -> None:
    """The exhaustive sweep beside the random fuzz: the known killers at every place, every run."""
    target: Target = request.getfixturevalue(which)
    body_routes = {op.path: op for op in operations(target.spec) if op.body is not None}
    assert set(body_routes) == set(target.valid), "every route with a body needs valid bodies to mutate"
    for path, bodies in target.valid.items():
        url = path.replace("{task_id}", "t-fuzz7")
        for body in single_mutations(bodies[0]):
            send(target, FuzzRequest(body_routes[path].method, url, encode(body)))


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/calibration", b'{"mean": 1' + b"0" * 400 + b', "std": 1.0, "n": 5}'),       # 10**400: no float holds it
    ("/v1/calibration", b'{"mean": NaN, "std": 1.0, "n": 5}'),
    ("/v1/calibration", b'{"mean": 0.0, "std": 1e400, "n": 5}'),
    ("/v1/submissions", b'{"task_id": "\\ud800", "envelope": {}}'),                   # a lone surrogate
    ("/v1/submissions", encode({"task_id": "t-fuzz0", "envelope": {"timestamp": 10**400}})),
    ("/v1/tasks/t-fuzz1/decline", encode({"code": "x", "reason": "\ud800"})),
])
def test_numbers_no_float_holds_and_lone_surrogates_are_named_422s(server: Target, path: str, body: bytes) -> None:
    before = len(server.audit.actions)
    reply = server.client.post(path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert server.audit.actions[before:] == ["reject.validation_error"]


def test_hostile_envelope_fields_of_a_live_task_are_refused_not_crashed(server: Target) -> None:
    for field, value in (("timestamp", 10**300), ("length", 2**53), ("sender", "\ud800"), ("scores", [10**300])):
        body = encode({"task_id": "t-fuzz8", "envelope": {**server.envelopes["t-fuzz8"], field: value}})
        reply = server.client.post("/v1/submissions", content=body, headers={"content-type": "application/json"})
        assert reply.status_code in (400, 422), (field, reply.text)


def test_a_refusal_that_would_echo_more_than_64_kib_is_still_audited_and_bounded(server: Target) -> None:
    huge_id = "t" * 60_000  # (an HTTP client sends URLs up to 64 KiB)
    for method, url, body in (
        ("POST", f"/v1/tasks/{huge_id}/decline", encode({"code": "x", "reason": "r"})),
        ("POST", "/v1/submissions", encode({"task_id": huge_id, "envelope": {}})),
        ("POST", "/v1/calibration", encode({"mean": 0.0, "std": 1.0, "n": 1, "k" * 70_000: 1})),
    ):
        before = len(server.audit.actions)
        reply = server.client.request(method, url, content=body, headers={"content-type": "application/json"})
        assert 400 <= reply.status_code < 500, reply.text[:300]
        assert len(reply.content) < 8_000  # the reply does not echo the request back either
        assert server.audit.actions[before:] == [f"reject.{reply.json()['code']}"]
