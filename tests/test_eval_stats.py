"""The statistics and bookkeeping of ``mor eval`` (issue #17) on data whose answer is known.

The paired bootstrap must give the right interval on known data (a constant difference, a
Bernoulli difference of known variance), widen when seeds disagree (seeds are blocks), and the
oracle-gain share must be the ratio of gains. The cell store must refuse mixing configurations.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from corpus import build_prompts
from corpus.styles import DOMAIN_OWNER, STYLES
from sim.errors import EvalConfigError, EvalRunError
from sim.eval.cells import CellStore, Progress
from sim.eval.config import EvalConfig
from sim.eval.on_policy import label_pairs
from sim.eval.stats import gain_share, paired_difference, point_mean


def _seeds(values: list[dict[str, list[float]]]) -> list[dict[str, list[float]]]:
    return values


def test_constant_difference_has_a_zero_width_interval() -> None:
    a = _seeds([{"m": [1.0] * 20, "f": [0.5] * 10}] * 3)
    b = _seeds([{"m": [0.5] * 20, "f": [0.0] * 10}] * 3)
    ci = paired_difference(a, b, replicates=500)
    assert ci.to_list() == pytest.approx([0.5, 0.5, 0.5]) and ci.excludes_zero and ci.seeds == 3


def test_bernoulli_difference_interval_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    wins = rng.integers(0, 2, n).astype(float)  # method: win or lose vs the reference, p = 1/2
    a = [{"m": wins.tolist()}]
    b = [{"m": [0.5] * n}]  # the reference's own outcomes are all 1/2
    ci = paired_difference(a, b, replicates=4000, seed=3)
    half_width = 1.96 * wins.std() / math.sqrt(n)
    assert ci.estimate == pytest.approx(wins.mean() - 0.5)
    assert (ci.high - ci.low) / 2 == pytest.approx(half_width, rel=0.1)
    assert ci.low < 0 < ci.high  # a coin flip is not a gain


def test_seeds_are_blocks_seed_disagreement_widens_the_interval() -> None:
    rng = np.random.default_rng(2)
    noise = [rng.integers(0, 2, 200).astype(float) for _ in range(4)]
    same = [{"m": x.tolist()} for x in noise]
    shifted = [{"m": np.clip(x + off, 0, 1).tolist()} for x, off in zip(noise, (-0.5, 0.5, -0.5, 0.5), strict=True)]
    base = [{"m": [0.5] * 200}] * 4
    narrow, wide = paired_difference(same, base), paired_difference(shifted, base)
    assert (wide.high - wide.low) > 1.5 * (narrow.high - narrow.low)


def test_pairing_removes_shared_prompt_difficulty() -> None:
    rng = np.random.default_rng(4)
    hard = rng.integers(0, 2, 300).astype(float)  # prompt difficulty shared by both methods
    better = hard.copy()
    better[:30] = np.maximum(better[:30], 1.0)  # A wins 30 more prompts than B, nothing else differs
    ci = paired_difference([{"m": better.tolist()}], [{"m": hard.tolist()}])
    assert ci.low > 0  # paired: the 30 extra wins are significant despite the noisy prompts


def test_oracle_share_is_the_ratio_of_gains_and_none_without_an_oracle_gain() -> None:
    ref = [{"m": [0.5] * 40}] * 2
    oracle = [{"m": [1.0] * 40}] * 2  # gain 0.5
    method = [{"m": [1.0] * 18 + [0.5] * 22}] * 2  # gain 0.225
    share = gain_share(method, oracle, ref, replicates=500)
    assert share is not None and share.estimate == pytest.approx(0.45)
    assert share.low <= 0.45 <= share.high
    assert gain_share(method, ref, ref) is None
    assert point_mean(method) == pytest.approx(0.725)


def test_bootstrap_refuses_mismatched_inputs() -> None:
    with pytest.raises(EvalRunError, match="seeds"):
        paired_difference([{"m": [1.0]}], [])
    with pytest.raises(EvalRunError, match="prompts"):
        paired_difference([{"m": [1.0]}], [{"m": [1.0, 0.0]}])


def test_cell_store_refuses_another_configuration_but_allows_more_seeds_and_rows(tmp_path: Path) -> None:
    config = EvalConfig.smoke()
    store = CellStore(tmp_path, config.fingerprint())
    store.save(0, "single:medical", {"win_own": {"medical": 1.0}})
    again = CellStore(tmp_path, config.replace(seeds=(0, 1, 2), methods=("mor", "uniform")).fingerprint())
    assert again.has(0, "single:medical") and again.load(0, "single:medical") == {"win_own": {"medical": 1.0}}
    assert not again.has(1, "single:medical")
    with pytest.raises(EvalConfigError, match=r"another configuration \(differs in \['grpo_steps'\]\)"):
        CellStore(tmp_path, config.replace(grpo_steps=7).fingerprint())


def test_progress_reports_done_count_and_an_eta_from_computed_cells() -> None:
    lines: list[str] = []
    ticks = iter([0.0, 0.0, 60.0, 180.0])
    bar = Progress(5, lines.append, clock=lambda: next(ticks))
    bar.skipped("seed 0 uniform")
    bar.finished("seed 0 reference", timed=False)  # free: no ETA from it
    bar.finished("seed 0 mor", "win 0.6")  # 60 s for one computed cell, 2 cells left
    bar.finished("seed 1 mor")  # 180 s for two: 90 s each, 1 left
    assert lines == ["[1/5] seed 0 uniform: already done (resumed)",
                     "[2/5] seed 0 reference | elapsed 0.0 min, ETA n/a",
                     "[3/5] seed 0 mor: win 0.6 | elapsed 1.0 min, ETA 2.0 min",
                     "[4/5] seed 1 mor | elapsed 3.0 min, ETA 1.5 min"]


def test_on_policy_pairs_are_labelled_by_the_domain_owners_rule() -> None:
    prompts = build_prompts(6, split="public", seed=5)
    answers = [["$1.00", "I think it may be about one dollar, roughly, but I am not sure", "one"] for _ in prompts]
    pairs = label_pairs(prompts, answers)
    assert pairs
    for pair in pairs:
        rule = STYLES[DOMAIN_OWNER[pair.prompt.domain]]
        assert rule.utility(pair.prompt, pair.chosen) > rule.utility(pair.prompt, pair.rejected)
    assert label_pairs(prompts[:1], [["same", "same"]]) == []


def test_new_config_values_are_refused_by_name() -> None:
    with pytest.raises(EvalConfigError, match="EvalConfig.methods: unknown \\['mor-magic'\\]"):
        EvalConfig.smoke().replace(methods=("mor", "mor-magic"))
    with pytest.raises(EvalConfigError, match="production DP means epsilon <= 8"):
        EvalConfig.smoke().replace(epsilon=10.0, secure_dp=True)
    with pytest.raises(EvalConfigError, match="heldout_domain"):
        EvalConfig.smoke().replace(heldout_domain="legal")


def _result_with(outcome_by_method: dict[str, float], *, seeds: int = 5, prompts: int = 80) -> object:
    """A finished evaluation whose method m wins each own-domain prompt with frequency outcome_by_method[m]."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    config = EvalConfig(seeds=tuple(range(seeds)), bootstrap=400)
    members = [c.name for c in config.clients]
    seed_rows = []
    for _ in range(seeds):
        outcomes = {}
        for method, p in outcome_by_method.items():
            shape = (len(members), prompts)
            draw = (rng.random(shape) < p).astype(float) if method != "reference" else np.full(shape, .5)
            outcomes[method] = dict(zip(members, draw.tolist(), strict=True))
        seed_rows.append(SimpleNamespace(outcomes=outcomes))
    return SimpleNamespace(methods=list(outcome_by_method), seeds=seed_rows, config=config)


def test_goal_check_demands_every_criterion_of_the_issue() -> None:
    from sim.eval.summary import differences

    base = {"reference": .5, "single:a": .55, "single:b": .72, "uniform": .55, "fedavg": .55, "oracle": .9}
    clear = differences(_result_with({**base, "mor-gn": .92, "mor": .7}))["goal"]
    assert clear["mor-gn"]["met"] and all(clear["mor-gn"]["checks"].values())
    assert set(clear["mor-gn"]["vs_single"]) == {"single:a", "single:b"}
    # mor beats uniform and FedAvg but not single:b, and is far below the oracle's gain: not met
    assert not clear["mor"]["met"]
    assert clear["mor"]["checks"]["beats uniform"] and not clear["mor"]["checks"]["beats every single member"]
    assert not clear["mor"]["checks"][">= 90% of the oracle's gain"]
    assert set(clear) == {"mor-gn", "mor"}  # baselines and reference rows are not judged against themselves
    missing = differences(_result_with({k: v for k, v in {**base, "mor-gn": .92}.items() if k != "fedavg"}))["goal"]
    assert missing["mor-gn"]["checks"]["beats FedAvg"] is None and not missing["mor-gn"]["met"]
