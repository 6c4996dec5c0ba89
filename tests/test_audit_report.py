"""``mor audit report`` on real logs: a real ``mor server serve`` process, members over mutual TLS, their own logs.

Prepare (once per module, ~10 s): a pilot ``tls-only`` policy and a real server; two members
enrol with signed privacy reports and submit signed score vectors for tasks the server's store
opened, each keeping its own audit log as ``mor client run`` does (``agent.enrolled`` with the
server's key, ``model.trained`` with its DP noise source, ``receipt.stored`` with the server's
signed receipt; alice "crashes" once before storing one) — bob's noise is a pilot PRNG, one of
his vectors is refused (out of range), and then his certificate is revoked with ``mor ca revoke``
(the CA's own log) and refused by the server. The server is stopped with SIGTERM, so its log is
sealed.

Execute / Assert: the report passes on the untouched logs and says, in the HTML a browser
renders and in the JSON, what an auditor looks for (flags in red, per member accepted/refused by
reason, ε against the budget, noise source); a changed byte in a member's log, a server log cut
back to its first checkpoint, and a policy that is not the one in force each fail it (exit 1,
written in red). The page is rendered in headless Chromium (skipped, with the reason printed,
only when Chromium is not installed).
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers.browser import chromium, missing_browser_tools
from helpers.consortium import Agent, issue_task, log_key, server_data, write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, start_server, write_server_config

from audit import AuditLog
from crypto.envelope import sign_plain_scores
from crypto.signing import SigningKey
from mor_cli.main import main as mor

pytestmark = pytest.mark.timeout(180)
CSPRNG = "os-csprng/chacha20 gaussian-sum-of-4 (Holohan-Braghin 2021)"
PILOT_PRNG = "INSECURE seeded torch PRNG (pilot only)"


def _member_log(tmp: Path, agent: Agent, server_key_sha256: str, noise: str) -> AuditLog:
    """The member's own log, opened with its signing key, as ``mor client train`` + ``run`` start it."""
    log = AuditLog.open(tmp / f"{agent.party.name}-audit", signing_key=agent.key, origin=agent.identity,
                        checkpoint_every=4)
    log.append(actor=agent.identity, action="model.trained", details={
        "epsilon": 3.0, "delta": 1e-6, "noise_source": noise, "insecure_pilot": noise == PILOT_PRNG})
    log.append(actor=agent.identity, action="agent.enrolled", digests={"server_key_sha256": server_key_sha256},
               details={"epsilon": 3.0, "delta": 1e-6, "privacy_mode": "tls-only"})
    return log


def _answer(agent: Agent, log: AuditLog, db: str, scores: list[float], *, store_receipt: bool = True) -> int:
    round_id, task_id = issue_task(db, agent.identity, n_items=len(scores))
    envelope = sign_plain_scores(scores, signing_key=agent.key, sender=agent.identity, round_id=round_id,
                                 task_id=task_id)
    reply = agent.submit(task_id, envelope.to_dict())
    if reply.status_code == 200 and store_receipt:
        receipt = reply.json()
        log.append(actor=agent.identity, action="receipt.stored", round_id=round_id, task_id=task_id,
                   digests={"server_leaf_sha256": receipt["audit_leaf_sha256"]}, details={"receipt": receipt})
    elif reply.status_code != 200:
        log.append(actor=agent.identity, action="submission.refused", outcome="refused", round_id=round_id,
                   task_id=task_id, details={"status": reply.status_code, "code": reply.json()["code"]})
    return reply.status_code


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("report")
    pki = make_pki(tmp)
    policy = write_policy(tmp / "policy.toml", mode="tls-only")
    config = write_server_config(tmp, pki, policy=policy, port=free_port())
    with start_server(config) as server:
        db = server_data(config)["database_url"]
        server_key = log_key(config).fingerprint()
        alice, bob = Agent.of(pki, "alice", server.base_url), Agent.of(pki, "bob", server.base_url)
        logs = {}
        for agent, noise in ((alice, CSPRNG), (bob, PILOT_PRNG)):
            assert agent.enrol().status_code == 200
            logs[agent.party.name] = _member_log(tmp, agent, server_key, noise)
        for _ in range(16):  # refusals are entries too: the receipts land after the first signed checkpoint
            assert alice.http.get("/v1/no-such-route").status_code == 404
        assert [_answer(alice, logs["alice"], db, s) for s in ([0.1, 0.2], [0.3, -0.4])] == [200, 200]
        assert [_answer(bob, logs["bob"], db, s) for s in ([0.5, 0.6], [0.5, 70.0])] == [200, 422]
        assert _answer(alice, logs["alice"], db, [0.7, 0.8], store_receipt=False) == 200  # "crashed" before storing
        assert mor(["ca", "revoke", "--dir", str(pki.directory), "--name", "bob"]) == 0  # into the CA's own log
        assert bob.http.get("/v1/status").status_code == 403  # certificate_revoked, in the server's log
        for agent in (alice, bob):
            agent.close()
            logs[agent.party.name].close()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, server.log_text()
    key_file = tmp / "server-log-key.pem"  # as the operator hands it to the auditor, out of band
    key_file.write_bytes(log_key(config).pem())
    ca_key = tmp / "ca-log-key.pem"
    ca_key.write_bytes(SigningKey.load(pki.directory / "ca" / "audit-key.pem").verify_key().pem())
    return {"tmp": tmp, "server_log": Path(server_data(config)["audit_dir"]), "policy": policy,
            "server_key": key_file, "agents": [tmp / "alice-audit", tmp / "bob-audit"],
            "ca_log": pki.directory / "audit", "ca_key": ca_key, "alice": alice.identity, "bob": bob.identity}


def _report(world: dict[str, Any], out: Path, *, server_log: Path | None = None,
            agents: list[Path] | None = None, policy: Path | None = None) -> tuple[int, dict[str, Any], str]:
    args = ["audit", "report", "--server-log", str(server_log or world["server_log"]), "--server-key",
            str(world["server_key"]), "--policy", str(policy or world["policy"]), "--ca-log", str(world["ca_log"]),
            "--ca-key", str(world["ca_key"]), "--out", str(out)]
    for directory in agents or world["agents"]:
        args += ["--agent-log", str(directory)]
    code = mor(args)
    return code, json.loads((out / "report.json").read_text()), (out / "report.html").read_text()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "LOCK").unlink(missing_ok=True)
    return dst


def test_untouched_logs_pass_and_the_report_says_what_an_auditor_looks_for(world: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    code, report, page = _report(world, tmp_path / "out")
    assert code == 0 and report["verdict"] == {"ok": True, "failures": []}
    assert [log["party"] for log in report["logs"]] == ["server", "agent", "agent", "ca"]
    assert all(log["ok"] for log in report["logs"])
    assert report["receipts"]["checked"] == 3 and report["receipts"]["failed"] == 0
    members = {m["identity"]: m for m in report["members"]}
    alice, bob = members[world["alice"]], members[world["bob"]]
    assert (alice["accepted"], alice["rounds_answered"], alice["unreceipted"]) == (3, 3, 1)
    assert alice["noise"] == "production"
    assert any(world["alice"] in f and "no receipt" in f for f in report["flags"])
    assert alice["refused"] == {"server: not_found": 16}
    assert (bob["accepted"], bob["noise"]) == (1, "pilot")
    assert bob["refused"] == {"server: score_out_of_range": 1, "server: certificate_revoked": 1,
                              "agent: submission score_out_of_range": 1}
    revoked = [(r["identity"], r["source"].split(":")[0]) for r in report["revocations"]]
    assert revoked == [(world["bob"], "server"), (world["bob"], "CA log")]
    assert [c["action"] for c in report["credentials"]] == ["certificate.revoked"]
    assert (alice["epsilon"], alice["budget"]) == (3.0, 8.0)
    assert any("pilot = true" in f for f in report["flags"]) and any(world["bob"] in f for f in report["flags"])
    assert report["policy"]["in_force"][0]["privacy_mode"] == "tls-only"
    assert not any("verified only with the key stored in the log" in f for f in report["flags"])  # all keys known
    server_log = next(log for log in report["logs"] if log["party"] == "server")
    assert server_log["key_source"] == "out of band" and len(server_log["key_corroborated_by"]) == 2
    assert not any(marker in page for marker in ("src=", "href=", "<script", "<link", "url("))  # self-contained
    assert "class='banner bad' id='flags'" in page and "PILOT (seeded PRNG)" in page


def test_a_changed_byte_in_a_member_log_fails_the_report(world: dict[str, Any], tmp_path: Path) -> None:
    alice = _copy(world["agents"][0], tmp_path / "alice-audit")
    entries = alice / "entries.jsonl"
    entries.write_bytes(entries.read_bytes().replace(b'"epsilon":3.0', b'"epsilon":1.0', 1))
    code, report, page = _report(world, tmp_path / "out", agents=[alice, world["agents"][1]])
    assert code == 1 and not report["verdict"]["ok"]
    [bad] = [log for log in report["logs"] if not log["ok"]]
    assert bad["directory"] == str(alice) and "line 1" in bad["problems"][0] and "signature" in bad["problems"][0]
    assert "fails verification" in report["verdict"]["failures"][0]
    assert "<b>FAIL</b>" in page and "class='banner bad' id='verdict'" in page


def test_a_server_log_cut_back_fails_verification_and_reconciliation(world: dict[str, Any], tmp_path: Path) -> None:
    server = _copy(world["server_log"], tmp_path / "server-audit")
    first = (server / "checkpoints.jsonl").read_text().splitlines(keepends=True)[0]
    (server / "checkpoints.jsonl").write_text(first)
    size = json.loads(first)["checkpoint"]["size"]
    code, report, _ = _report(world, tmp_path / "out", server_log=server)
    assert code == 1 and report["receipts"]["failed"] >= 1
    failed = [r for r in report["receipts"]["items"] if not r["ok"]]
    assert all(r["audit_index"] >= size for r in failed) and "final signed checkpoint" in failed[0]["reason"]


def test_a_policy_other_than_the_one_in_force_fails(world: dict[str, Any], tmp_path: Path) -> None:
    other = write_policy(tmp_path / "other.toml", mode="ckks")
    code, report, _ = _report(world, tmp_path / "out", policy=other)
    assert code == 1 and any("is not the one in force" in f for f in report["verdict"]["failures"])


def test_unusable_input_is_one_line_and_an_existing_report_is_kept(world: dict[str, Any], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert mor(["audit", "report", "--server-log", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"mor audit: error: server log {tmp_path / 'nope'}: no such directory\n"
    assert _report(world, tmp_path / "o")[0] == 0
    assert mor(["audit", "report", "--server-log", str(world["server_log"]), "--out", str(tmp_path / "o")]) == 2
    assert "already holds a report" in capsys.readouterr().err


def test_the_report_renders_in_a_browser(world: dict[str, Any], tmp_path: Path) -> None:
    reason = missing_browser_tools()
    if reason is not None:
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    out = tmp_path / "out"
    assert _report(world, out)[0] == 0
    home = tmp_path / "home"
    home.mkdir()
    url = (out / "report.html").resolve().as_uri()
    dom = chromium(home, "--dump-dom", url)
    assert 'id="verdict"' in dom and "PASS" in dom[dom.index('id="verdict"'):][:300]
    flags = dom[dom.index('id="flags"'):][:2000]
    assert "pilot = true" in flags and world["bob"] in flags
    assert world["alice"] in dom and "score_out_of_range" in dom and "Checkpoint timeline" in dom
    shot = tmp_path / "report.png"
    chromium(home, f"--screenshot={shot}", "--window-size=1300,2000", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000, len(data)  # tables and text, not a blank page


def _entry(index: int, action: str, round_id: str | None = None, **details: object) -> dict[str, Any]:
    return {"index": index, "action": action, "actor": "server", "time": 1.0 + index, "round_id": round_id,
            "details": details}


def test_fused_only_decryptions_are_judged_against_the_policy_and_the_key_holders_log() -> None:
    from audit.report.build import PolicyTerms, judge_decryptions
    from audit.report.facts import decryption_facts

    kinds = {"calibrate-1": "calibrate", "score-1": "score"}
    keyholder = [_entry(0, "decrypt.agent", "calibrate-1"), _entry(1, "decrypt.fused", "score-1"),
                 _entry(2, "decrypt.agent", "score-1")]
    server = [_entry(0, "keyholder.agent_decryption", "calibrate-1", keyholder_audit_index=0),
              _entry(1, "decrypt.fused", "score-1", keyholder_audit_index=1)]
    policy = PolicyTerms(source="p.toml", digest="sha256:0", mode="fused-only", max_epsilon=3.0,
                         lifetime_epsilon=None, public_rounds_per_agent=True)
    failures: list[str] = []
    judged = judge_decryptions(decryption_facts(server, keyholder, kinds), "fused-only", policy, True, failures)
    assert judged["keyholder"]["decrypt_agent_by_round_kind"] == {"calibrate": 1, "score": 1}
    assert failures == ["fused-only: the key holder opened 1 member vector(s) of score rounds, which the policy "
                        "does not allow"]

    server.append(_entry(2, "decrypt.agent", "score-1"))  # the server opening one member's vector itself
    server[1]["details"]["keyholder_audit_index"] = 0  # and citing the wrong key-holder entry
    failures = []
    judge_decryptions(decryption_facts(server, keyholder[:2], kinds), "fused-only", policy, True, failures)
    assert failures[0] == "fused-only: the server logged 1 per-member decryptions"
    assert "cites key-holder entry 0, which is decrypt.agent of round calibrate-1" in failures[1]
