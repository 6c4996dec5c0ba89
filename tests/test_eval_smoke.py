"""mor eval end to end on a tiny configuration: every method runs, metrics are sane, MoR really routes.

The numbers of so small a run mean nothing; what is checked is what must hold at any size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.eval import EvalConfig, EvalResult, run_eval, write_report

pytestmark = pytest.mark.slow

TINY = EvalConfig.smoke().replace(n_client_pairs=16, n_test_pairs=8, n_public_pairs=16, n_calibration=8,
                                  n_train_prompts=4, n_eval_prompts=6, n_sft=24, warm_start_steps=10,
                                  grpo_steps=1, central_epochs=2, router_epochs=10, online_prompts=4,
                                  online_samples=3, bootstrap=200)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> EvalResult:
    return run_eval(TINY, tmp_path_factory.mktemp("eval"), progress=False)


def test_every_method_is_measured_and_metrics_are_rates(result: EvalResult) -> None:
    clients = [c.name for c in TINY.clients]
    (seed,) = result.seeds
    assert set(seed.win_own) == set(seed.win_all) == set(seed.accuracy) == set(result.methods)
    assert len(result.methods) == 1 + 3 + 12
    for method in result.methods:
        assert set(seed.win_own[method]) == set(clients)
        values = [*seed.win_own[method].values(), *seed.win_all[method].values(), seed.accuracy[method]]
        assert all(0.0 <= v <= 1.0 for v in values), (method, values)
    assert set(seed.pair_accuracy) == set(result.methods) - {"reference"}
    assert {"fit:mor", "fit:mor-shrunk", "fit:mor-heldout", "fit:mor-shrunk-heldout", "online"} <= set(seed.routers)
    assert seed.routers["online"]["pairs"] >= 2
    assert all(0.0 <= v <= 1.0 for row in seed.pair_accuracy.values() for v in row.values())


def test_reference_against_itself_is_exactly_one_half(result: EvalResult) -> None:
    (seed,) = result.seeds
    assert set(seed.win_own["reference"].values()) == {0.5}
    assert set(seed.win_all["reference"].values()) == {0.5}


def test_every_grpo_run_trained_and_privacy_was_spent(result: EvalResult) -> None:
    (seed,) = result.seeds
    for method, run in seed.grpo.items():
        assert run["lora_delta_norm"] > 0, method
    for spec in TINY.clients:
        assert 0 < seed.privacy[spec.name]["epsilon"] <= TINY.epsilon * 1.01
    assert all(0 < e <= TINY.epsilon * 1.01 for e in seed.privacy["fedavg"]["epsilons"].values())
    assert seed.privacy["central"]["private"] is False


def test_mor_uses_router_weights_that_differ_from_uniform(result: EvalResult) -> None:
    (seed,) = result.seeds
    uniform, mor = seed.weights_used["uniform"], seed.weights_used["mor"]
    assert set(mor) == set(uniform) and mor
    for domain, weights in uniform.items():
        assert all(w == pytest.approx(1 / 3) for w in weights.values())
        assert sum(mor[domain].values()) == pytest.approx(1.0)
    gaps = [abs(w - 1 / 3) for weights in mor.values() for w in weights.values()]
    assert max(gaps) > 1e-3, "the fitted router should not be the uniform one"


def test_report_files_are_written(result: EvalResult, tmp_path: Path) -> None:
    paths = write_report(result.to_dict(), tmp_path)
    table = (tmp_path / "eval.md").read_text()
    assert table.count("| GRPO + ") >= 2 * 7 and "reference (no alignment)" in table
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["summary"]["win_own"]["reference"]["medical"] == [0.5, 0.0]
    assert all(p.is_file() for p in paths)
