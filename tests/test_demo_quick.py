"""``mor demo --quick`` end to end: real processes, real mTLS, real CKKS, real DP, real GRPO.

The demo runs once (module fixture) as a subprocess exactly as a user runs it; the tests then
read what it wrote, as an auditor would. One test tampers with a *copy* of the server's audit
log to show that the reconciliation the demo reports can actually fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from crypto.signing import SigningKey
from sim.demo.reconcile import reconcile
from sim.harness import OFFLINE_ENV, mor_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK_BUDGET_S = 180


def _mor(*args: str, timeout: float = 540) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **OFFLINE_ENV}
    return subprocess.run(mor_command(args), cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("demo")
    started = time.monotonic()
    run = _mor("demo", "--quick", "--toy-model", "--out", str(tmp / "out"), "--cache", str(tmp / "cache"))
    elapsed = time.monotonic() - started
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    results = json.loads((tmp / "out" / "results.json").read_text("utf-8"))
    return {"out": tmp / "out", "run": run, "results": results, "elapsed": elapsed}


def test_demo_prints_each_phase_and_where_the_report_is(demo: dict[str, Any]) -> None:
    stdout, out = demo["run"].stdout, demo["out"]
    phases = re.findall(r"^\[(\d)/9\] ([a-z-]+):", stdout, re.MULTILINE)
    assert [name for _, name in phases] == ["provision", "dp-train", "policy", "services", "align", "stop", "audit",
                                            "evaluate", "report"]
    assert stdout.strip().splitlines()[-1] == f"report: {(out / 'report.html').resolve()}"
    # the budget is 3 min on an idle 2-core machine; CI shares its cores with other tests, so only gross
    # regressions fail here
    assert demo["elapsed"] < QUICK_BUDGET_S * 3, f"--quick took {demo['elapsed']:.0f} s"


def test_audit_logs_verify_and_every_receipt_is_in_the_server_log(demo: dict[str, Any]) -> None:
    audit = demo["results"]["audit"]
    assert audit["verification_passed"] is True and audit["reconciliation_passed"] is True
    parties = {log["party"] for log in audit["logs"]}
    agents = {a["identity"] for a in demo["results"]["agents"]}
    assert parties == {"server"} | agents and all(log["ok"] for log in audit["logs"])
    receipted = {r["agent"] for r in audit["receipts"]}
    assert receipted == agents, "every agent must hold receipts that were reconciled"
    assert audit["receipts_failed"] == 0 and audit["receipts_checked"] >= 3 * 3  # calibrate + router + GRPO rounds
    assert all(p["exit"] == 0 and not p["killed"] for p in demo["results"]["processes"].values())


def test_training_moved_the_lora_weights_with_finite_kl_within_dp_budgets(demo: dict[str, Any]) -> None:
    results = demo["results"]
    training = results["training"]
    assert training["lora_delta_norm"] > 0 and training["adapter_lora_b_norm"] > 0
    assert training["kl_finite"] and len(training["steps"]) == 3
    assert all(step["agents_answered"] == 3 for step in training["steps"])
    assert training["router"]["fitted"] and set(training["router"]["mean_weights_by_domain"]) == {
        "medical", "finance", "general"}
    archs = {a["name"]: a["arch"] for a in results["agents"]}
    assert archs == {"medical": "frozen-mlp", "finance": "tiny-vlt", "detail": "lora-minilm"}
    for agent in results["agents"]:
        assert 0 < agent["epsilon_spent"] <= agent["epsilon_budget"] <= results["policy"]["max_epsilon"]
        assert Path(agent["privacy_report"]).is_file()
    assert results["ok"] is True and all(results["checks"].values())
    evaluation = results["evaluation"]
    assert set(evaluation["clients"]) == {"medical", "finance", "detail"}
    assert 0 <= evaluation["gold_accuracy_after"] <= 1


def test_report_is_self_contained_and_records_the_dp_noise_source(demo: dict[str, Any]) -> None:
    page = (demo["out"] / "report.html").read_text("utf-8")
    assert page.count("data:image/png;base64,") == 4
    assert not re.search(r"""(src|href)=['"](?!data:)""", page), "report must not load anything from outside"
    # the default (finance) policy is a production policy: no pilot, no insecure RNG, nothing to excuse
    assert demo["results"]["insecure"] == [] and "INSECURE" not in page
    for agent in demo["results"]["agents"]:
        assert agent["insecure_pilot"] is False and agent["noise_source"].startswith("os-csprng"), agent
        assert agent["noise_source"] in page


def test_reconciliation_fails_when_the_server_cuts_its_log(demo: dict[str, Any], tmp_path: Path) -> None:
    out, results = demo["out"], demo["results"]
    server_audit = tmp_path / "server-audit"
    shutil.copytree(out / "server" / "data" / "audit", server_audit)
    (server_audit / "LOCK").unlink(missing_ok=True)
    checkpoints = (server_audit / "checkpoints.jsonl").read_text("utf-8").splitlines(keepends=True)
    (server_audit / "checkpoints.jsonl").write_text(checkpoints[0], "utf-8")  # keep only the first signed head
    first_size = json.loads(checkpoints[0])["checkpoint"]["size"]
    server_key = SigningKey.load(out / "server" / "data" / "server-signing.pem").verify_key()
    agents = {a["identity"]: (out / "agents" / a["name"] / "state" / "audit",
                              SigningKey.load(out / "agents" / a["name"] / "state" / "signing-key.pem").verify_key())
              for a in results["agents"]}
    cut = reconcile(server_audit, server_key, agents)
    assert not cut.logs_ok and not cut.receipts_ok
    failed = [r for r in cut.receipts if not r.ok]
    assert failed and all(r.audit_index >= first_size for r in failed)
    assert "not covered by the server's final signed checkpoint" in failed[0].reason


def test_demo_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    missing = _mor("demo", "--quick", "--policy", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == f"mor demo: error: --policy {tmp_path / 'nope.toml'}: no such file"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("user data")
    busy = _mor("demo", "--quick", "--out", str(tmp_path / "busy"))
    assert busy.returncode == 2 and "not empty and not a previous `mor demo` output" in busy.stderr
    assert (tmp_path / "busy" / "mine.txt").read_text() == "user data"
