"""The empirical privacy audit: its statistics on known inputs, and the attacks on a model that leaks.

The end-to-end test runs ``mor privacy audit`` on a tiny ``tiny-vlt`` member under the shipped
healthcare policy (real Opacus DP-SGD with CSPRNG noise for the DP models) with a deliberately
memorising non-private contrast (many epochs on few pairs): both attacks must then find the
contrast's canaries far above chance at the lowest FPR the canaries allow.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers.pki import make_pki
from scipy import stats

from client_agent.errors import PrivacyAuditError
from client_agent.privacy_audit import AuditSettings
from client_agent.privacy_audit.attacks import lira_signal
from client_agent.privacy_audit.canaries import balanced_assignment, make_canaries
from client_agent.privacy_audit.stats import clopper_pearson, epsilon_bound, operating_point
from corpus.builders import build_client_pairs
from corpus.store import save_pairs
from mor_cli.main import main

REPO = Path(__file__).resolve().parent.parent
HEALTHCARE = REPO / "policies" / "healthcare.toml"


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (3, 128), (0, 128), (127, 128), (37, 500)])
def test_clopper_pearson_matches_the_beta_quantiles(k: int, n: int) -> None:
    lower, upper = clopper_pearson(k, n, 0.95)
    expect_lower = 0.0 if k == 0 else stats.beta.ppf(0.025, k, n - k + 1)
    expect_upper = 1.0 if k == n else stats.beta.ppf(0.975, k + 1, n - k)
    assert lower == pytest.approx(expect_lower, abs=1e-9) and upper == pytest.approx(expect_upper, abs=1e-9)


def test_clopper_pearson_known_values_and_refusals() -> None:
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)  # the "rule of three" family
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** (1 / 10), abs=1e-12)
    assert clopper_pearson(0, 100, 0.99)[1] == pytest.approx(1 - 0.005 ** (1 / 100), abs=1e-12)
    with pytest.raises(ValueError, match="successes <= trials"):
        clopper_pearson(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 10, 1.0)


def test_epsilon_bound_on_known_inputs() -> None:
    assert epsilon_bound(0.5, 0.01, 0.0) == pytest.approx(math.log(50))
    assert epsilon_bound(0.5, 0.01, 1e-5) == pytest.approx(math.log((0.5 - 1e-5) / 0.01))
    assert epsilon_bound(0.01, 0.01, 0.0) == 0.0 and epsilon_bound(0.005, 0.01, 0.0) == 0.0  # no evidence
    assert epsilon_bound(0.3, 0.0, 1e-5) == math.inf and epsilon_bound(1e-6, 0.0, 1e-5) == 0.0


def test_operating_point_counts_rates_and_confidence_bound() -> None:
    non_member = np.arange(100, dtype=float)               # 0 … 99
    member = np.array([99.5] * 30 + [98.5] * 10 + [0.0] * 60)
    point = operating_point(member, non_member, 0.01, delta=0.0)
    assert point.threshold == 98.0  # the 2nd largest non-member: 1 false positive (99) is allowed
    assert (point.true_positives, point.false_positives) == (40, 1) and point.tpr == 0.4 and point.fpr == 0.01
    tpr_lo, fpr_hi = stats.beta.ppf(0.025, 40, 61), stats.beta.ppf(0.975, 2, 99)
    assert point.epsilon_point == pytest.approx(math.log(40.0))
    assert point.epsilon_lower == pytest.approx(math.log(tpr_lo / fpr_hi), rel=1e-6)
    assert point.epsilon_lower < point.epsilon_point < point.epsilon_upper
    strict = operating_point(member, non_member, 0.001, delta=0.0)  # < 1000 non-members: no false positive at all
    assert (strict.true_positives, strict.false_positives) == (30, 0) and strict.epsilon_point == math.inf
    assert strict.epsilon_ceiling == pytest.approx(math.log(0.025 ** (1 / 100) / (1 - 0.025 ** (1 / 100))), rel=1e-6)


def test_lira_prefers_the_canary_mean_it_is_near() -> None:
    rng = np.random.default_rng(0)
    members = balanced_assignment(50, 4, rng)
    difficulty = rng.normal(0, 3, 50)  # per-canary offsets a plain threshold cannot see
    shadows = difficulty[None, :] + 2.0 * members + rng.normal(0, 0.1, (4, 50))
    inside = difficulty + 2.0
    assert (lira_signal(inside, shadows, members) > 0).all() and (lira_signal(difficulty, shadows, members) < 0).all()
    assert (members.sum(axis=0) == 2).all()


def test_canaries_are_reproducible_and_settings_are_checked() -> None:
    a, b = make_canaries(6, 7), make_canaries(6, 7)
    assert [(p.prompt.question, p.chosen, p.rejected) for p in a] == [(p.prompt.question, p.chosen, p.rejected)
                                                                       for p in b]
    assert a[0].prompt.image.tobytes() == b[0].prompt.image.tobytes() and a[0].chosen != a[1].chosen
    for bad, message in [({"shadows": 3}, "--shadows must be an even number >= 4"),
                         ({"canaries": 7}, "--canaries must be an even number >= 8"),
                         ({"confidence": 1.0}, "--confidence")]:
        with pytest.raises(PrivacyAuditError, match=message):
            AuditSettings(**bad).check()  # type: ignore[arg-type]


def _agent(tmp: Path) -> Path:
    pki = make_pki(tmp, "health-consortium")
    party = pki.issue("medical")
    save_pairs(build_client_pairs("medical", 8, seed=0), tmp / "data")
    out = tmp / "agent.toml"
    assert main(["client", "init-config", "--out", str(out), "--server-url", "https://127.0.0.1:8443",
                 "--server-identity", pki.server.identity, "--policy", str(HEALTHCARE), "--cert", str(party.cert),
                 "--key", str(party.key), "--ca", str(pki.ca_cert), "--crl", str(pki.crl), "--arch", "frozen-mlp",
                 "--data-dir", str(tmp / "data"), "--state-dir", str(tmp / "state"),
                 "--epsilon", "3", "--delta", "1e-6"]) == 0
    out.write_text(out.read_text().replace("params = {  }", "params = { hidden = 32 }"))
    return out


def test_attacks_find_a_memorising_models_canaries(tmp_path: Path) -> None:
    """Non-private, 60 epochs on 8 pairs + 20 canaries: the margins must give the members away."""
    from client_agent.config import load_agent_config
    from client_agent.privacy_audit.attacks import run_attacks
    from client_agent.privacy_audit.canaries import random_half, with_canaries
    from client_agent.privacy_audit.models import canary_margins, train_plain
    from corpus.dataset import load_pair_dataset

    config = load_agent_config(_agent(tmp_path))
    data = load_pair_dataset(config.agent.data_dir).pairs
    canaries = make_canaries(40, 11)
    rng = np.random.default_rng(5)
    membership = np.vstack([random_half(40, rng)[None, :], balanced_assignment(40, 4, rng)])
    margins = np.stack([canary_margins(train_plain(config, with_canaries(data, canaries, members), epochs=60,
                                                   progress=False).model, canaries, batch_size=64)
                        for members in membership])
    attacks = run_attacks(margins, membership, delta=1e-6, confidence=0.95)
    for name, result in attacks.items():
        strict = result.points[1]  # 0.1% FPR: with 20 non-members, no false positive at all
        assert (strict.members, strict.non_members, strict.false_positives) == (20, 20, 0)
        # chance is about 1 member of 20 above every non-member; a memorising model gives many
        assert strict.true_positives >= 8 and result.auc >= 0.85, (name, result.auc, strict)
        assert strict.epsilon_lower > 0.0, (name, strict)  # evidence of leakage, even with 20 + 20 canaries


def test_cli_refuses_bad_settings_in_one_line(tmp_path: Path, capsys) -> None:
    config = _agent(tmp_path)
    assert main(["privacy", "audit", "--config", str(config), "--shadows", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--shadows must be an even number >= 4" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "state" / "privacy-audit.json").exists()
