"""Lifetime privacy budget: the policy key, how runs compose, and the agent refusing a retraining past it.

The end-to-end test trains under the shipped ``policies/healthcare.toml`` as it is (no pilot copy,
no insecure_pilot): CSPRNG noise, a signed ledger entry, and ``mor client privacy-report`` showing it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.pki import make_pki

from client_agent.budget_ledger import LifetimeLedger
from client_agent.errors import LifetimeBudgetExceededError
from corpus.builders import build_client_pairs
from corpus.store import save_pairs
from mor_cli.main import main
from policies import PolicyError, load_policy
from policies.lifetime import LedgerRun, compose_epsilon

REPO = Path(__file__).resolve().parent.parent
HEALTHCARE = REPO / "policies" / "healthcare.toml"


def _policy_text(lifetime: str) -> str:
    return re.sub(r"(?m)^lifetime_epsilon = .*$", f"lifetime_epsilon = {lifetime}", HEALTHCARE.read_text("utf-8"))


def test_shipped_policies_cap_the_lifetime_and_the_key_is_validated(tmp_path: Path) -> None:
    assert load_policy(HEALTHCARE).privacy.lifetime_epsilon == 6.0
    assert load_policy(REPO / "policies" / "finance.toml").privacy.lifetime_epsilon == 16.0
    bad = tmp_path / "bad.toml"
    bad.write_text(_policy_text("2.0"), "utf-8")
    with pytest.raises(PolicyError, match=r"privacy\.lifetime_epsilon.*must be >= privacy\.max_epsilon"):
        load_policy(bad)
    bad.write_text(_policy_text('"6"'), "utf-8")
    with pytest.raises(PolicyError, match=r"privacy\.lifetime_epsilon"):
        load_policy(bad)


def test_runs_compose_with_the_policy_accountant() -> None:
    one, used = compose_epsilon([(1.0, 0.1, 30)], delta=1e-6, accountant="rdp")
    two, _ = compose_epsilon([(1.0, 0.1, 30), (1.0, 0.1, 30)], delta=1e-6, accountant="rdp")
    assert used == "rdp" and one < two < 2 * one  # retraining costs budget, composition beats adding ε
    assert compose_epsilon([(1.0, 0.1, 60)], delta=1e-6, accountant="rdp")[0] == pytest.approx(two)
    assert compose_epsilon([(1.0, 0.1, 30), (2.0, 0.1, 30)], delta=1e-6, accountant="gdp")[1] == "rdp"
    assert compose_epsilon([], delta=1e-6, accountant="prv") == (0.0, "prv")


def _run(sigma: float = 1.0) -> LedgerRun:
    return LedgerRun(report_sha256="ab" * 32, created_at="2026-11-29T12:00:00+00:00", epsilon=2.0, delta=1e-6,
                     noise_multiplier=sigma, sample_rate=0.1, steps=30)


def test_ledger_refuses_a_run_past_the_lifetime_and_says_why() -> None:
    ledger = LifetimeLedger("mor://h/client/a", (_run(), _run()), limit=8.0, delta=1e-6, accountant="rdp")
    ledger.approve(5.0, 0.1, 30)  # a very noisy extra run still fits
    with pytest.raises(LifetimeBudgetExceededError, match=r"lifetime epsilon .* \(now .* after 2 training\(s\)\), "
                                                          r"past the policy's lifetime_epsilon 8.0 \(RDP"):
        ledger.approve(1.0, 0.1, 30)
    LifetimeLedger("a", (_run(),) * 9, limit=None, delta=1e-6, accountant="rdp").approve(0.5, 0.5, 1000)


def _agent(tmp: Path, pki, party, policy: Path, name: str) -> Path:
    out = tmp / f"{name}.toml"
    assert main(["client", "init-config", "--out", str(out), "--server-url", "https://127.0.0.1:8443",
                 "--server-identity", pki.server.identity, "--policy", str(policy), "--cert", str(party.cert),
                 "--key", str(party.key), "--ca", str(pki.ca_cert), "--crl", str(pki.crl), "--arch", "tiny-vlt",
                 "--data-dir", str(tmp / "data"), "--state-dir", str(tmp / "state"),
                 "--epsilon", "3", "--delta", "1e-6"]) == 0
    text = out.read_text().replace("params = {  }", "params = { dim = 16, heads = 2, max_text = 16 }")
    out.write_text(text.replace("epochs = 5", "epochs = 1").replace("batch_size = 64", "batch_size = 20"))
    return out


def test_shipped_healthcare_policy_trains_and_a_retraining_past_the_lifetime_is_refused(tmp_path: Path, capsys):
    pki = make_pki(tmp_path, "health-consortium")
    party = pki.issue("medical")
    save_pairs(build_client_pairs("medical", 60, seed=0), tmp_path / "data")
    shipped = _agent(tmp_path, pki, party, HEALTHCARE, "shipped")
    assert main(["client", "train", "--config", str(shipped), "--quiet"]) == 0
    assert main(["client", "privacy-report", "--config", str(shipped)]) == 0
    out = capsys.readouterr().out
    assert "noise_source" in out and "os-csprng/chacha20 gaussian-sum-of-4" in out and "INSECURE" not in out
    assert "lifetime ledger: 1 DP training(s)" in out and "policy lifetime_epsilon 6.0" in out
    assert "Opacus PRV accountant over every run's" in out
    report = json.loads((tmp_path / "state" / "privacy-report.json").read_text())["report"]
    assert report["secure_mode"] and not report["insecure_pilot"] and report["prior_runs"] == []
    assert report["lifetime_epsilon"] == pytest.approx(report["epsilon"], rel=0.05)

    # the same member under a policy with a tighter lifetime: the second training is refused, and audited
    tight = tmp_path / "tight-policy.toml"
    tight.write_text(_policy_text("3.5"), "utf-8")
    config = _agent(tmp_path, pki, party, tight, "tight")
    before = (tmp_path / "state" / "privacy-report.json").read_bytes()
    assert main(["client", "train", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "past the policy's lifetime_epsilon 3.5" in err and "Traceback" not in err
    assert (tmp_path / "state" / "privacy-report.json").read_bytes() == before
    entries = [json.loads(line)["entry"] for line in (tmp_path / "state" / "audit" / "entries.jsonl").open()]
    assert [e["action"] for e in entries if e["action"] in ("privacy.spent", "training.refused")] == \
        ["privacy.spent", "training.refused"]
