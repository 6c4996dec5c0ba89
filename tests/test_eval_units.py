"""mor eval building blocks: true-rule win rates, config refusals, FedAvg under DP, the report writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client_agent.dp import PrivacyBudget
from corpus import STYLES, build_client_pairs, build_prompts
from mor_cli.main import main
from sim.eval import EvalConfig, EvalConfigError
from sim.eval.fedavg import FedAvgConfig, train_fedavg
from sim.eval.metrics import answer_accuracy, mean_std, win_rate
from sim.eval.scoring import CalibratedModel, scorer_pair_accuracy


def test_win_rate_is_one_half_against_itself_and_follows_the_true_rule() -> None:
    prompts = build_prompts(6, domain="general", split="test", seed=0)
    gold = [p.gold or "" for p in prompts]
    wrong = ["I am not sure, maybe purple?" for _ in prompts]
    rule = STYLES["detail"]
    assert win_rate(rule, prompts, gold, gold) == 0.5
    assert win_rate(rule, prompts, gold, wrong) == 1.0  # a correct answer beats a hedged wrong one
    assert win_rate(rule, prompts, wrong, gold) == 0.0
    assert answer_accuracy(prompts, gold) == 1.0 and answer_accuracy(prompts, wrong) == 0.0
    assert mean_std([0.25, 0.75]) == (0.5, pytest.approx(0.35355, abs=1e-4))


@pytest.mark.parametrize("changes, message", [
    ({"seeds": ()}, "seeds"),
    ({"seeds": (1, 1)}, "seeds"),
    ({"per_device_batch": 6, "group_size": 4}, "multiple of group_size"),
    ({"delta": 0.5}, "delta"),
    ({"grpo_steps": 0}, "grpo_steps"),
    ({"learning_rate": 0.0}, "learning_rate"),
])
def test_bad_settings_are_refused_by_name(changes: dict, message: str) -> None:
    with pytest.raises(EvalConfigError, match=message):
        EvalConfig.smoke().replace(**changes)


def test_cli_refuses_bad_seed_count_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mor eval: error: --seeds must be >= 1, got 0"]
    assert main(["eval", "--model", "somewhere", "--toy-model"]) == 2  # one policy model, said before any work
    assert capsys.readouterr().err.strip() == "mor eval: error: --model and --toy-model: choose one policy model"
    for flag, name in (("--lr", "learning_rate"), ("--beta", "beta")):  # the GRPO budget's knobs, checked by name
        assert main(["eval", "--toy-model", "--smoke", flag, "0", "--out", "/nonexistent/never-written"]) == 2
        assert f"EvalConfig.{name} must be > 0" in capsys.readouterr().err


def test_fedavg_spends_exactly_the_budget_and_learns(tmp_path: Path) -> None:
    pairs = {s: build_client_pairs(s, 40, seed=0) for s in ("medical", "detail")}
    budget = PrivacyBudget(8.0, 1e-3)
    result = train_fedavg(pairs, FedAvgConfig(rounds=2, local_epochs=2, budget=budget, batch_size=20), seed=0,
                          progress=False)
    for name in pairs:
        assert 7.5 < result.epsilons[name] <= 8.0 * 1.01  # one accountant over all rounds, not per round
        assert result.epsilons_independent[name] == pytest.approx(result.epsilons[name], rel=0.01)
    assert len(result.round_losses) == 2 and set(result.round_losses[0]) == set(pairs)
    calibrated = CalibratedModel.calibrate("fedavg", result.model, [(p.prompt, p.chosen) for p in pairs["medical"]])
    accuracy = scorer_pair_accuracy(calibrated, pairs["medical"])
    assert 0.0 <= accuracy <= 1.0


def test_report_renders_every_method_and_round_trips_json(tmp_path: Path) -> None:
    from sim.eval.report import write_report

    clients = ["a", "b"]
    cell = {c: [0.5, 0.0] for c in clients}
    methods = ["reference", "single:a", "single:b", "uniform", "fedavg", "mor", "central"]
    fit = {"val_accuracy": 0.7, "val_accuracy_uniform": 0.6, "mean_weights_by_domain": {"general": {"a": .4, "b": .6}}}
    result = {
        "config": {"seeds": [0], "clients": [{"name": c} for c in clients], "epsilon": 8.0, "delta": 1e-5},
        "methods": methods, "wall_seconds": 60.0, "dp_rng": "x", "seeds": [{"router_fit": fit}],
        "summary": {"win_own": {m: cell for m in methods}, "win_all": {m: cell for m in methods},
                    "win_own_mean": {m: [0.5, 0.0] for m in methods}, "accuracy": {m: [0.1, 0.0] for m in methods},
                    "accuracy_all": {m: [0.1, 0.0] for m in methods},
                    "pair_accuracy": {m: cell for m in methods[1:]}},
    }
    paths = write_report(result, tmp_path, command="mor eval --quick")
    assert {p.name for p in paths} == {"eval.md", "eval.json", "win_rates.png", "rm_pair_accuracy.png"}
    text = (tmp_path / "eval.md").read_text()
    assert "`mor eval --quick`" in text and "GRPO + MoR learned router" in text and "GRPO + a RM only" in text
    assert json.loads((tmp_path / "eval.json").read_text())["summary"] == result["summary"]
    assert all(p.stat().st_size > 1000 for p in paths if p.suffix == ".png")
