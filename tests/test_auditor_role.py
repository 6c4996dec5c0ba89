"""The ``auditor`` role against a real ``mor server serve`` process: what it reads, what members may not.

One server for the module (``ckks``, checkpoint every 16 entries). An auditor certificate reads
every auditor route; a member's certificate is refused them (403 ``auditor_only``, audited as
``reject.auditor_only``) and sees only its own row on the status page; an auditor cannot act
as a member. ``mor audit fetch`` makes a copy that ``mor audit verify`` accepts with the key
obtained out of band, refuses one that does not verify, and a tampered copy fails.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers.consortium import Agent, actions, audit_report, log_key, write_policy
from helpers.pki import Party, TestPKI, make_pki
from helpers.procs import ServiceProcess, free_port, start_server, write_server_config

from audit import verify_consistency
from client_agent.dp.secure_engine import NOISE_SOURCE_PILOT, NOISE_SOURCE_SECURE
from crypto.canonical import canonical_json
from crypto.signing import VerifyKey
from mor_cli.main import main as mor

pytestmark = pytest.mark.timeout(120)
AUDITOR_ROUTES = ["/v1/audit/entries", "/v1/audit/checkpoints", "/v1/audit/consistency?old=1&new=2",
                  "/v1/audit/public-key", "/v1/privacy-reports", "/v1/digests"]


@dataclass
class World:
    pki: TestPKI
    server: ServiceProcess
    config: Path
    auditor: Party
    http: httpx.Client  # the auditor's
    alice: Agent
    bob: Agent

    def key_file(self, tmp: Path) -> Path:
        path = tmp / "server-log-key.pem"  # as the operator hands it over, out of band
        path.write_bytes(log_key(self.config).pem())
        return path

    def fetch(self, out: Path, *extra: str, party: Party | None = None) -> int:
        who = party or self.auditor
        return mor(["audit", "fetch", "--server", self.server.base_url, "--cert", str(who.cert), "--key",
                    str(who.key), "--ca", str(self.pki.ca_cert), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("auditor")
    pki = make_pki(tmp)
    config = write_server_config(tmp, pki, policy=write_policy(tmp / "policy.toml", mode="ckks"), port=free_port())
    auditor = pki.issue("audrey", "auditor")
    with start_server(config) as server:
        alice, bob = Agent.of(pki, "alice", server.base_url), Agent.of(pki, "bob", server.base_url)
        assert alice.enrol(noise_source=NOISE_SOURCE_SECURE).status_code == 200
        assert bob.enrol(noise_source=NOISE_SOURCE_PILOT).status_code == 200
        for _ in range(20):  # refusals are entries too: more than one signed checkpoint (every 16)
            assert alice.http.get("/v1/no-such-route").status_code == 404
        with httpx.Client(base_url=server.base_url, verify=auditor.client_context(), timeout=60) as http:
            yield World(pki, server, config, auditor, http, alice, bob)
        alice.close()
        bob.close()
    assert server.proc.returncode == 0, server.log_text()
    report = audit_report(config)
    assert report.ok, report.first_problem


def test_auditor_reads_every_auditor_route_and_the_shared_ones(world: World) -> None:
    http = world.http
    assert http.get("/v1/audit/checkpoint").status_code == 200  # signs a head covering everything so far
    entries = http.get("/v1/audit/entries", params={"limit": "5"}).json()
    assert (entries["start"], len(entries["lines"]), entries["next"]) == (0, 5, 5)
    assert json.loads(entries["lines"][0])["entry"]["index"] == 0
    cps = [json.loads(line)["checkpoint"] for line in http.get("/v1/audit/checkpoints").json()["lines"]]
    assert len(cps) >= 2
    old, new = cps[0], cps[-1]
    proof = http.get("/v1/audit/consistency", params={"old": str(old["size"]), "new": str(new["size"])}).json()
    verify_consistency(old["size"], new["size"], old["root"], new["root"],
                       [bytes.fromhex(h) for h in proof["path_sha256"]])
    assert http.get("/v1/audit/public-key").content == log_key(world.config).pem()
    reports = {r["agent"]: r for r in http.get("/v1/privacy-reports").json()["reports"]}
    assert set(reports) == {world.alice.identity, world.bob.identity}
    signed = dict(reports[world.alice.identity]["privacy_report"])
    signature = base64.b64decode(signed.pop("signature_b64"))
    key = VerifyKey.from_bytes(base64.b64decode(reports[world.alice.identity]["signing_public_key_b64"]))
    key.verify(signature, canonical_json(signed))  # the member's own signature, as it enrolled
    digests = http.get("/v1/digests").json()
    status = http.get("/v1/status").json()
    assert digests["policy_digest"] == status["policy_digest"] and digests["privacy_mode"] == "ckks"
    assert {a["agent"] for a in status["agents"]} == {world.alice.identity, world.bob.identity}
    for shared in ("/status", "/v1/status/keys", "/v1/context", "/v1/audit/proof/0"):
        assert http.get(shared).status_code == 200, shared
    # each member's DP noise source, from its signed report: a pilot's seeded PRNG stands out in red
    sources = {a["agent"]: a["noise_source"] for a in status["agents"]}
    assert sources == {world.alice.identity: NOISE_SOURCE_SECURE, world.bob.identity: NOISE_SOURCE_PILOT}
    page = http.get("/status").text
    assert f"<span class='off' id='pilot-noise'>{NOISE_SOURCE_PILOT}</span>" in page and NOISE_SOURCE_SECURE in page
    # access to the audit trail is itself audited: who read which range of what
    after = http.get("/v1/audit/entries", params={"start": str(entries["next"]), "limit": "1000"}).json()
    reads = [json.loads(line)["entry"] for line in after["lines"]]
    reads = [e for e in reads if e["action"] == "audit.read"]
    assert [(e["actor"], e["details"]["what"], e["details"]["start"], e["details"]["returned"]) for e in reads][:3] == [
        (world.auditor.identity, "entries", 0, 5), (world.auditor.identity, "checkpoints", 0, len(cps)),
        (world.auditor.identity, "privacy-reports", 0, 2)]
    enrolled = {e["actor"]: e["details"]["noise_source"] for e in (
        json.loads(line)["entry"] for line in http.get("/v1/audit/entries", params={"limit": "1000"}).json()["lines"])
        if e["action"] == "agent.enrolled"}
    assert enrolled == {world.alice.identity: NOISE_SOURCE_SECURE, world.bob.identity: NOISE_SOURCE_PILOT}


def test_members_are_refused_auditor_routes_and_see_only_their_own_row(world: World) -> None:
    bob = world.bob
    for route in AUDITOR_ROUTES:
        reply = bob.http.get(route)
        assert (reply.status_code, reply.json()["code"]) == (403, "auditor_only"), route
    status = bob.http.get("/v1/status").json()
    assert [a["agent"] for a in status["agents"]] == [bob.identity]
    page = bob.http.get("/status").text
    assert bob.identity in page and world.alice.identity not in page
    assert bob.http.get("/v1/audit/checkpoint").status_code == 200  # receipts stay checkable
    assert bob.http.get("/v1/audit/proof/1").status_code == 200
    counts = actions(audit_report(world.config, live=True), bob.identity)
    assert counts["reject.auditor_only"] == len(AUDITOR_ROUTES)


def test_an_auditor_cannot_act_as_a_member(world: World) -> None:
    auditor = Agent(world.auditor, world.alice.key, world.http)
    attempts = [auditor.enrol(), world.http.get("/v1/tasks/next"), auditor.submit("t-x", {}),
                world.http.post("/v1/calibration", json={"mean": 0.0, "std": 1.0, "n": 4}),
                world.http.post("/v1/tasks/t-x/decline", json={"code": "x", "reason": "y"})]
    assert [(r.status_code, r.json()["code"]) for r in attempts] == [(403, "wrong_role")] * 5
    assert actions(audit_report(world.config, live=True), world.auditor.identity)["reject.wrong_role"] == 5


@pytest.mark.parametrize(("route", "params", "status"), [
    ("/v1/audit/entries", {"start": "1.0"}, 422), ("/v1/audit/entries", {"start": " 1"}, 422),
    ("/v1/audit/entries", {"start": "+1"}, 422), ("/v1/audit/entries", {"start": "01"}, 422),
    ("/v1/audit/entries", {"start": "-1"}, 422), ("/v1/audit/entries", {"start": "1_0"}, 422),
    ("/v1/audit/entries", {"start": "9" * 400}, 422), ("/v1/audit/entries", {"limit": "0"}, 422),
    ("/v1/audit/entries", {"limit": "1001"}, 422), ("/v1/audit/entries", {"start": "999999"}, 404),
    ("/v1/audit/checkpoints", {"start": "nan"}, 422), ("/v1/audit/consistency", {"old": "1"}, 422),
    ("/v1/audit/consistency", {"old": "3", "new": "2"}, 422),
    ("/v1/audit/consistency", {"old": "1", "new": "9999999"}, 404),
    ("/v1/privacy-reports", {"limit": "101"}, 422), ("/v1/privacy-reports", {"start": "50"}, 404),
])
def test_range_parameters_are_parsed_strictly(world: World, route: str, params: dict[str, str],
                                              status: int) -> None:
    reply = world.http.get(route, params=params)
    assert reply.status_code == status, reply.text
    assert reply.json()["code"] in {"validation_error", "bad_range", "beyond_log", "beyond_list"}


def test_fetch_then_verify_and_a_tampered_copy_fails(world: World, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    key = world.key_file(tmp_path)
    copy = tmp_path / "copy"
    assert world.fetch(copy, "--public-key", str(key)) == 0, capsys.readouterr()
    assert mor(["audit", "verify", str(copy), "--public-key", str(key), "--quiet"]) == 0
    lines = (copy / "entries.jsonl").read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b'"actor":"', b'"actor":"X', 1)
    (copy / "entries.jsonl").write_bytes(b"\n".join(lines))
    capsys.readouterr()
    assert mor(["audit", "verify", str(copy), "--public-key", str(key), "--quiet"]) == 1
    assert "entries.jsonl line 4" in capsys.readouterr().err


def test_fetch_refuses_a_copy_that_does_not_verify_and_members_cannot_fetch(world: World, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]
                                                                            ) -> None:
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(world.alice.key.verify_key().pem())  # not the log's key
    out = tmp_path / "copy"
    assert world.fetch(out, "--public-key", str(wrong)) == 1
    assert "REFUSED" in capsys.readouterr().out
    assert not out.exists() and (tmp_path / "copy.unverified" / "entries.jsonl").exists()
    assert world.fetch(tmp_path / "member", party=world.bob.party) == 2
    assert "auditor_only" in capsys.readouterr().err
