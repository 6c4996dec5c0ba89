"""Every way a request is refused, against real ``mor server serve`` processes.

Two servers, each started once for this module: a ``ckks`` server (TLS refusals, revocation,
the submission checks) and a ``tls-only`` pilot with an allow-list and a low rate limit.
Refusals at the TLS handshake never reach the app (nothing is logged: the log's size does not
move); every refusal the app sees is answered with its status and ``ErrorBody.code`` and is
an entry ``reject.<code>`` in the server's real audit log, which verifies afterwards.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers.consortium import Agent, actions, audit_report, issue_task, log_key, server_data, write_policy
from helpers.pki import TestPKI, make_pki
from helpers.procs import ServiceProcess, free_port, start_server, write_server_config

from crypto.ckks import PublicContext, load_public_context
from crypto.envelope import Envelope, seal_scores, sign_plain_scores
from crypto.signing import SigningKey
from server.state import StateStore
from wire.messages import Receipt

pytestmark = pytest.mark.timeout(180)


@dataclass
class World:
    pki: TestPKI
    server: ServiceProcess
    config: Path

    @property
    def db(self) -> str:
        return str(server_data(self.config)["database_url"])

    def agent(self, name: str) -> Agent:
        return Agent.of(self.pki, name, self.server.base_url)

    def audit_size(self, agent: Agent) -> int:
        return int(agent.http.get("/v1/audit/checkpoint").json()["size"])


def _world(tmp: Path, **policy: object) -> Iterator[World]:
    pki = make_pki(tmp)
    config = write_server_config(tmp, pki, policy=write_policy(tmp / "policy.toml", **policy),  # type: ignore[arg-type]
                                 port=free_port())
    with start_server(config) as server:
        yield World(pki, server, config)
    assert server.proc.returncode == 0, server.log_text()  # SIGTERM: graceful
    report = audit_report(config)
    assert report.ok, report.first_problem
    assert report.uncovered == 0  # the final checkpoint covers every entry


@pytest.fixture(scope="module")
def ckks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from _world(tmp_path_factory.mktemp("ckks"), mode="ckks")


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    listed = [f"mor://testnet/client/{name}" for name in ("carol", "erin", "grace")]
    yield from _world(tmp_path_factory.mktemp("pilot"), mode="tls-only",
                      admission={"allowed_identities": listed},
                      scores={"min": -1.0, "max": 1.0, "out_of_range": "refuse", "max_vector_length": 64},
                      limits={"max_body_bytes": 1_000_000, "requests_per_minute": 60})


def test_handshake_refusals_never_reach_the_app(ckks: World, tmp_path: Path) -> None:
    witness = ckks.agent("witness")
    before = ckks.audit_size(witness)
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.minimum_version = ssl.TLSVersion.TLSv1_3
    no_cert.load_verify_locations(cafile=str(ckks.pki.ca_cert))
    foreign = make_pki(tmp_path / "foreign").issue("mallory").client_context()
    tls12 = ckks.pki.issue("old-client").client_context()
    tls12.minimum_version = ssl.TLSVersion.TLSv1_2
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    for context in (no_cert, foreign, tls12):
        with pytest.raises(httpx.HTTPError), httpx.Client(verify=context, timeout=10) as http:
            http.get(ckks.server.url("/v1/status"))
    assert ckks.server.alive()
    assert ckks.audit_size(witness) == before


def test_certificate_revoked_while_running_is_refused_on_open_and_new_connections(ckks: World) -> None:
    bob = ckks.agent("bob")
    assert bob.http.get("/v1/status").status_code == 200
    ckks.pki.revoke("bob")
    reply = bob.http.get("/v1/status")  # same keep-alive connection: the app re-reads the CRL
    assert (reply.status_code, reply.json()["code"]) == (403, "certificate_revoked")
    with httpx.Client(verify=bob.party.client_context(), timeout=10) as fresh:
        assert fresh.get(ckks.server.url("/v1/tasks/next")).json()["code"] == "certificate_revoked"
    assert actions(audit_report(ckks.config), bob.identity)["reject.certificate_revoked"] == 2


def _context(agent: Agent) -> PublicContext:
    return load_public_context(agent.http.get("/v1/context").content)


def test_submission_refusals_each_answered_and_audited(ckks: World) -> None:
    alice = ckks.agent("alice")
    assert alice.enrol(epsilon=50.0).json()["code"] == "privacy_budget_exceeded"
    enrolled = alice.enrol()
    assert enrolled.status_code == 200, enrolled.text
    server_key = base64.b64decode(enrolled.json()["server_signing_public_key_b64"])
    assert server_key == log_key(ckks.config).raw()
    dave = ckks.agent("dave")  # certified, never enrolled
    refused = dave.http.get("/v1/tasks/next")
    assert (refused.status_code, refused.json()["code"]) == (403, "not_enrolled")
    context = _context(alice)
    round_1, task_1 = issue_task(ckks.db, alice.identity, n_items=3)
    task = alice.http.get("/v1/tasks/next", params={"wait": 5}).json()
    assert task["task_id"] == task_1 and len(task["items"]) == 3

    def seal(values: list[float], round_id: str, task_id: str, now: float | None = None) -> dict[str, object]:
        return seal_scores(values, context, signing_key=alice.key, sender=alice.identity, round_id=round_id,
                           task_id=task_id, now=now).to_dict()

    envelope = seal([0.1, 0.2, 0.3], round_1, task_1)
    accepted = alice.submit(task_1, envelope)
    assert accepted.status_code == 200, accepted.text
    assert Receipt.model_validate(accepted.json()).task_id == task_1
    assert alice.submit(task_1, envelope).json() == accepted.json()  # a retry gets the same receipt
    duplicate = alice.submit(task_1, seal([0.1, 0.2, 0.3], round_1, task_1))
    assert (duplicate.status_code, duplicate.json()["code"]) == (409, "duplicate_submission")

    round_2, task_2 = issue_task(ckks.db, alice.identity, n_items=3)
    forged = dict(seal([0.1, 0.2, 0.3], round_2, task_2), signature=base64.b64encode(b"\0" * 64).decode())
    stale = seal([0.1, 0.2, 0.3], round_2, task_2, now=time.time() - 3600)
    short = seal([0.1, 0.2], round_2, task_2)
    expected = [(forged, 400, "integrity_error"), (stale, 400, "integrity_error"), (short, 422, "wrong_length"),
                (short, 400, "integrity_error")]  # the replayed envelope's nonce was already seen
    for sent, status, code in expected:
        reply = alice.submit(task_2, sent)
        assert (reply.status_code, reply.json()["code"]) == (status, code)
    big = alice.http.post("/v1/submissions", content=b"x" * 3_000_000, headers={"content-type": "application/json"})
    assert (big.status_code, big.json()["code"]) == (413, "body_too_large")

    page = alice.http.get("/status")
    assert page.status_code == 200 and alice.identity in page.text and "<script" not in page.text
    report = audit_report(ckks.config)
    assert report.ok, report.first_problem
    assert actions(report, dave.identity)["reject.not_enrolled"] == 1
    assert dict(actions(report, alice.identity)) == {
        "reject.privacy_budget_exceeded": 1, "agent.enrolled": 1, "submission.accepted": 1,
        "reject.duplicate_submission": 1, "reject.integrity_error": 3, "reject.wrong_length": 1,
        "reject.body_too_large": 1}


def test_pilot_policy_is_recorded_as_insecure(pilot: World) -> None:
    grace = pilot.agent("grace")
    status = grace.http.get("/v1/status").json()
    assert status["privacy_mode"] == "tls-only"
    assert actions(audit_report(pilot.config), "server")["policy.insecure"] == 1
    assert "INSECURE" in pilot.server.log_text()


def test_out_of_range_scores_are_refused_under_tls_only(pilot: World) -> None:
    carol = pilot.agent("carol")
    assert carol.enrol().status_code == 200
    round_id, task_id = issue_task(pilot.db, carol.identity, n_items=2)
    envelope = sign_plain_scores([0.5, 7.0], signing_key=carol.key, sender=carol.identity, round_id=round_id,
                                 task_id=task_id).to_dict()
    reply = carol.submit(task_id, envelope)
    assert (reply.status_code, reply.json()["code"]) == (422, "score_out_of_range")
    assert "scores[1]=7.0" in reply.json()["message"]
    assert actions(audit_report(pilot.config), carol.identity)["reject.score_out_of_range"] == 1


def test_certified_but_not_admitted_identity_is_refused(pilot: World) -> None:
    frank = pilot.agent("frank")
    reply = frank.http.get("/v1/status")
    assert (reply.status_code, reply.json()["code"]) == (403, "not_admitted")
    assert actions(audit_report(pilot.config), frank.identity)["reject.not_admitted"] == 1


def test_rate_limit_answers_429_with_retry_after(pilot: World) -> None:
    erin = pilot.agent("erin")
    replies = [erin.http.get("/v1/status") for _ in range(16)]  # burst = 10 s x 1 request/s
    limited = [r for r in replies if r.status_code == 429]
    assert [r.status_code for r in replies[:10]] == [200] * 10
    assert limited and all(r.json()["code"] == "rate_limited" and r.headers["Retry-After"] for r in limited)
    assert actions(audit_report(pilot.config), erin.identity)["reject.rate_limited"] == len(limited)


def test_declined_task_leaves_the_queue_and_is_audited(ckks: World) -> None:
    frank, grace = ckks.agent("frank"), ckks.agent("grace-d")
    assert frank.enrol().status_code == 200 and grace.enrol().status_code == 200
    _, too_big = issue_task(ckks.db, frank.identity, n_items=3)
    _, next_one = issue_task(ckks.db, frank.identity, n_items=2)
    assert frank.http.get("/v1/tasks/next").json()["task_id"] == too_big
    body = {"code": "task_too_large", "reason": "3 items; the local limit is 2"}
    stolen = grace.http.post(f"/v1/tasks/{too_big}/decline", json=body)
    assert (stolen.status_code, stolen.json()["code"]) == (403, "not_your_task")
    declined = frank.http.post(f"/v1/tasks/{too_big}/decline", json=body)
    assert declined.status_code == 200, declined.text
    assert frank.http.get("/v1/tasks/next").json()["task_id"] == next_one  # no longer blocks the queue
    again = frank.http.post(f"/v1/tasks/{too_big}/decline", json=body)
    assert (again.status_code, again.json()["code"]) == (410, "task_closed")
    bad = frank.http.post(f"/v1/tasks/{next_one}/decline", json={"code": "Not A Code", "reason": "x"})
    assert bad.status_code == 422
    assert actions(audit_report(ckks.config), frank.identity)["task.declined"] == 1


def _signed_garbage(env: Envelope, key: SigningKey, ciphertexts: tuple[bytes, ...]) -> dict[str, object]:
    """A member's own envelope with other ciphertext bytes, correctly signed again with its own key."""
    unsigned = dataclasses.replace(env, ciphertexts=ciphertexts, signature=b"")
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.signed_bytes())).to_dict()


def test_a_member_cannot_void_rounds_with_signed_garbage_or_skew_them_with_its_own_scale(ckks: World) -> None:
    """Signed but malformed ciphertexts are refused before any receipt; a self-reported scale is bounded."""
    mallory = ckks.agent("mallory")
    assert mallory.enrol().status_code == 200
    context = _context(mallory)
    round_id, task_id = issue_task(ckks.db, mallory.identity, n_items=3)

    def honest() -> Envelope:  # a fresh nonce each time: a refused envelope's nonce is spent
        return seal_scores([0.1, 0.2, 0.3], context, signing_key=mallory.key, sender=mallory.identity,
                           round_id=round_id, task_id=task_id)

    import tenseal as ts  # a ciphertext at another scale: it parses, but its sum with the others would fail

    other = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    other.global_scale = 2 ** 20
    cases = {"garbage": (b"\x00not a ciphertext" * 64,),
             "foreign scale": (ts.ckks_vector(other, [0.1] * 3).serialize(),)}
    for what, ciphertexts in cases.items():
        reply = mallory.submit(task_id, _signed_garbage(honest(), mallory.key, ciphertexts))
        assert (reply.status_code, reply.json()["code"]) == (422, "malformed_ciphertext"), what
    assert mallory.submit(task_id, honest().to_dict()).status_code == 200  # the task is still open to a good vector

    for body, status, code in (({"mean": 0.0, "std": 1e-100, "n": 8}, 422, "calibration_out_of_bounds"),
                               ({"mean": 1e6, "std": 1.0, "n": 8}, 422, "calibration_out_of_bounds")):
        reply = mallory.http.post("/v1/calibration", json=body)
        assert (reply.status_code, reply.json()["code"]) == (status, code), body
    for raw in (b'{"mean": NaN, "std": 1.0, "n": 8}', b'{"mean": 0.0, "std": Infinity, "n": 8}'):
        reply = mallory.http.post("/v1/calibration", content=raw, headers={"content-type": "application/json"})
        assert reply.status_code == 422, raw
    assert mallory.http.post("/v1/calibration", json={"mean": 0.5, "std": 0.8, "n": 8}).status_code == 200
    store = StateStore(ckks.db)
    stored = json.loads(store.agent(mallory.identity)["calibration"])  # type: ignore[index]
    assert (stored["std"], stored["source"]) == (0.8, "self-reported")
    store.set_calibration(mallory.identity, {"mean": 0.1, "std": 0.3, "n": 48, "source": "server-measured"})
    assert mallory.http.post("/v1/calibration", json={"mean": 0.5, "std": 0.01, "n": 8}).status_code == 200
    assert json.loads(store.agent(mallory.identity)["calibration"])["std"] == 0.3  # type: ignore[index]
    store.engine.dispose()
    counted = actions(audit_report(ckks.config), mallory.identity)
    assert counted["reject.malformed_ciphertext"] == 2 and counted["reject.calibration_out_of_bounds"] == 2
    assert counted["agent.calibrated"] == 1 and counted["agent.calibration.ignored"] == 1
