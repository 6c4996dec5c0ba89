"""The binary envelope transport (issue 14 §6): same envelope, same checks, same receipt as the JSON one.

Against a real ``mor server serve`` process (ckks, mutual TLS): the agent's own channel
(:meth:`client_agent.transport.ServerChannel.submit_envelope`) gets a receipt for exactly the
digest the JSON form has, the stored row is that envelope's canonical JSON, a retry in either
form gets the same receipt, and every bad binary body is a clean, audited 4xx — never a 5xx.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.consortium import Agent, actions, audit_report, issue_task, server_data, write_policy
from helpers.pki import TestPKI, make_pki
from helpers.procs import ServiceProcess, free_port, start_server, write_server_config

from client_agent.receipts import verify_receipt
from client_agent.transport import RetryPolicy, ServerChannel, ServerPin
from crypto.canonical import canonical_json
from crypto.ckks import CKKSKeyOwner, load_public_context
from crypto.envelope import BINARY_MEDIA_TYPE, Envelope, seal_scores, sign_plain_scores
from crypto.errors import IntegrityError
from crypto.signing import SigningKey, VerifyKey
from server.state import StateStore

pytestmark = pytest.mark.timeout(180)
BINARY = {"content-type": BINARY_MEDIA_TYPE}


@pytest.fixture(scope="module")
def owner() -> CKKSKeyOwner:
    return CKKSKeyOwner.generate()


def test_binary_form_is_the_same_envelope_and_its_wire_form_is_canonical_json(owner: CKKSKeyOwner) -> None:
    key = SigningKey.generate()
    two_chunks = seal_scores([0.5] * 5000, owner.public_context, signing_key=key, sender='m "\\ \n é',
                             round_id="r", task_id="t", payload_sha256="a" * 64)
    plain = sign_plain_scores([1.0, -2.5], signing_key=key, sender="m", round_id="r", task_id="t")
    for env in (two_chunks, plain):
        back = Envelope.from_binary(env.to_binary())
        assert back == env and back.sha256() == env.sha256() == Envelope.from_dict(env.to_dict()).sha256()
        assert env.to_bytes() == canonical_json(env.to_dict())  # the spliced wire form is byte-identical
    assert len(two_chunks.ciphertexts) == 2
    assert len(two_chunks.to_binary()) < 0.8 * len(two_chunks.to_bytes())  # no base64: a third fewer bytes


def _bad_bodies(env: Envelope) -> dict[str, bytes]:
    body = env.to_binary()
    head, raw = body.split(b"\n", 1)
    fields = json.loads(head)
    return {
        "no newline": head,
        "truncated": body[:-1],
        "one byte more": body + b"\0",
        "head not JSON": b"{" + body,
        "ciphertexts also in the head": canonical_json({**fields, "ciphertexts": []}) + b"\n" + raw,
        "lengths not integers": canonical_json({**fields, "ciphertext_bytes": ["1"]}) + b"\n" + raw,
        "zero length": canonical_json({**fields, "ciphertext_bytes": [0, len(raw)]}) + b"\n" + raw,
        "head a list": b"[]\n" + raw,
        "deep head": b"[" * 100_000 + b"\n",
    }


def test_malformed_binary_bodies_are_integrity_errors(owner: CKKSKeyOwner) -> None:
    env = seal_scores([0.5] * 3, owner.public_context, signing_key=SigningKey.generate(), sender="m",
                      round_id="r", task_id="t")
    for name, body in _bad_bodies(env).items():
        with pytest.raises(IntegrityError):
            Envelope.from_binary(body)
            pytest.fail(f"{name}: parsed")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestPKI, ServiceProcess, Path]]:
    tmp = tmp_path_factory.mktemp("binary")
    pki = make_pki(tmp)
    config = write_server_config(tmp, pki, policy=write_policy(tmp / "policy.toml", mode="ckks"), port=free_port())
    with start_server(config) as server:
        yield pki, server, config
    report = audit_report(config)
    assert report.ok, report.first_problem


def test_agent_channel_submits_binary_and_gets_the_json_forms_receipt(
        world: tuple[TestPKI, ServiceProcess, Path]) -> None:
    pki, server, config = world
    alice = Agent.of(pki, "alice", server.base_url)
    enrolled = alice.enrol().json()
    server_key = VerifyKey.from_bytes(base64.b64decode(enrolled["server_signing_public_key_b64"]))
    context = load_public_context(alice.http.get("/v1/context").content)
    database = str(server_data(config)["database_url"])
    round_id, task_id = issue_task(database, alice.identity, n_items=3)
    env = seal_scores([0.1, 0.2, 0.3], context, signing_key=alice.key, sender=alice.identity, round_id=round_id,
                      task_id=task_id)
    channel = ServerChannel(server.base_url, alice.party.client_context(), ServerPin(pki.server.identity),
                            retry=RetryPolicy(max_attempts=1))
    try:
        receipt = channel.submit_envelope(env)
        verify_receipt(receipt, server_key, agent=alice.identity, task_id=task_id, round_id=round_id,
                       envelope_sha256=env.sha256())
        assert channel.submit_envelope(env) == receipt  # a retry after a lost reply: the same receipt
    finally:
        channel.close()
    assert alice.submit(task_id, env.to_dict()).json() == receipt.model_dump(mode="json")  # JSON form: same one
    store = StateStore(database)
    try:
        row = store.submission(task_id)
    finally:
        store.engine.dispose()
    assert row is not None and canonical_json(row["envelope"]) == env.to_bytes()  # stored: what was signed
    assert actions(audit_report(config), alice.identity)["submission.accepted"] == 1


def test_bad_binary_submissions_are_clean_audited_refusals(world: tuple[TestPKI, ServiceProcess, Path]) -> None:
    pki, server, config = world
    bob = Agent.of(pki, "bob", server.base_url)
    assert bob.enrol().status_code == 200
    context = load_public_context(bob.http.get("/v1/context").content)
    database = str(server_data(config)["database_url"])
    round_id, task_id = issue_task(database, bob.identity, n_items=3)

    def sealed(n: int = 3) -> Envelope:
        return seal_scores([0.1] * n, context, signing_key=bob.key, sender=bob.identity, round_id=round_id,
                           task_id=task_id)

    def post(body: bytes, headers: dict[str, str] = BINARY) -> tuple[int, str]:
        reply = bob.http.post("/v1/submissions/binary", content=body, headers=headers)
        return reply.status_code, reply.json()["code"]

    honest = sealed()
    carol = Agent.of(pki, "carol", server.base_url)  # certified, never enrolled: refused before anything is parsed
    not_enrolled = carol.http.post("/v1/submissions/binary", content=b"", headers={"content-type": "text/plain"})
    assert (not_enrolled.status_code, not_enrolled.json()["code"]) == (403, "not_enrolled")
    garbage = dataclasses.replace(honest, ciphertexts=(b"\x5e" * len(honest.ciphertexts[0]),), signature=b"")
    garbage = dataclasses.replace(garbage, signature=bob.key.sign(garbage.signed_bytes()))
    forged = dataclasses.replace(sealed(), signature=b"\0" * 64)
    assert post(honest.to_binary(), {"content-type": "application/json"}) == (415, "unsupported_media_type")
    for name, body in _bad_bodies(honest).items():
        assert post(body) == (400, "integrity_error"), name
    assert post(forged.to_binary()) == (400, "integrity_error")
    assert post(garbage.to_binary()) == (422, "malformed_ciphertext")
    assert post(sealed(2).to_binary()) == (422, "wrong_length")
    assert bob.http.post("/v1/submissions/binary", content=sealed().to_binary(), headers=BINARY).status_code == 200
    refused = actions(audit_report(config), bob.identity)
    assert refused["reject.unsupported_media_type"] == 1 and refused["reject.malformed_ciphertext"] == 1
    assert refused["reject.integrity_error"] == len(_bad_bodies(honest)) + 1 and refused["submission.accepted"] == 1
    assert actions(audit_report(config), carol.identity)["reject.not_enrolled"] == 1
