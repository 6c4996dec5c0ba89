"""A round end to end in the other two privacy modes, with real agent processes over mTLS.

``test_demo_quick.py`` covers ``ckks`` (the default policy). Here the same real system runs
under ``fused-only`` (healthcare policy: a separate key-holder process decrypts only fused
vectors) and ``tls-only`` (pilot policy), and an auditor's view of each run is checked: every
audit log verifies, every agent receipt is in the server's log, and the server's log shows the
decryptions the mode allows — and none that it forbids.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from audit import verify_log
from crypto.signing import VerifyKey
from sim.harness import OFFLINE_ENV, mor_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vlm-cache")  # the warm-started VLM is built once for both runs


def _server_actions(out: Path) -> Counter[str]:
    lines = (out / "server" / "data" / "audit" / "entries.jsonl").read_text("utf-8").splitlines()
    return Counter(json.loads(line)["entry"]["action"] for line in lines)


@pytest.mark.parametrize(("policy", "mode"), [("healthcare", "fused-only"), ("pilot", "tls-only")])
def test_round_end_to_end_in_privacy_mode(policy: str, mode: str, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, **OFFLINE_ENV}
    run = subprocess.run(mor_command(["demo", "--quick", "--toy-model", "--policy",
                                      str(REPO_ROOT / "policies" / f"{policy}.toml"),
                                      "--out", str(out), "--cache", str(cache)]),
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=840)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    results = json.loads((out / "results.json").read_text("utf-8"))
    assert results["policy"]["privacy_mode"] == mode and results["ok"] is True
    audit = results["audit"]
    assert audit["verification_passed"] and audit["reconciliation_passed"] and audit["receipts_failed"] == 0
    assert {r["agent"] for r in audit["receipts"]} == {a["identity"] for a in results["agents"]}
    assert results["training"]["lora_delta_norm"] > 0 and results["training"]["kl_finite"]
    actions = _server_actions(out)
    assert actions["round.fused"] >= 3 and actions["submission.accepted"] >= 9
    if mode == "fused-only":
        assert actions["decrypt.agent"] == 0, "fused-only: the server must never decrypt one agent's vector"
        keyholder = [log for log in audit["logs"] if "keyholder" in log["party"]]
        assert keyholder and keyholder[0]["ok"]
        key_dir = Path(keyholder[0]["directory"])
        report = verify_log(key_dir, VerifyKey.load(key_dir / "log_public_key.pem"))
        assert report.ok and report.actions_by_actor and any(
            "decrypt.fused" in counts for counts in report.actions_by_actor.values())
        assert not list((out / "server").rglob("ckks-secret*")), "the server must hold no CKKS secret key"
        # healthcare opts in to public rounds per agent: the router is fitted through the key holder,
        # which opened only calibrate/router vectors (3 agents x 2 public rounds), never a score round
        assert results["training"]["router"]["fitted"] is True
        opened = sum(counts.get("decrypt.agent", 0) for counts in report.actions_by_actor.values())
        assert opened == actions["keyholder.agent_decryption"] >= 6
    else:
        assert actions["decrypt.agent"] == 0 and actions["policy.insecure"] >= 1
