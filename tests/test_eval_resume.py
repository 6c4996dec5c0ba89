"""A tiny ``mor eval`` end to end, interrupted and resumed (issue #17): finished cells are not recomputed.

The first run is interrupted (KeyboardInterrupt from the progress line, as a Ctrl-C after a cell
would) once its first GRPO cell is saved; the rerun with the same output folder must skip the
finished cells — their files untouched — compute the rest, and write eval.md / eval.json / plots
with the confidence-interval tables. The numbers of so small a run mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus.styles import STYLES
from mor_cli.main import main
from sim.eval import EvalConfig, run_eval, write_report
from sim.eval.data import build_data

TINY = EvalConfig.smoke().replace(n_client_pairs=16, n_test_pairs=8, n_public_pairs=16, n_calibration=8,
                                  n_train_prompts=4, n_eval_prompts=6, n_sft=24, warm_start_steps=10,
                                  grpo_steps=1, router_epochs=10, online_prompts=4, online_samples=3,
                                  bootstrap=200, methods=("reference", "oracle", "mor-gn"))


class Interrupted(KeyboardInterrupt):  # a Ctrl-C of our own, so pytest does not stop the session
    pass


def test_interrupted_run_resumes_without_recomputing_finished_cells(tmp_path: Path) -> None:
    seen: list[str] = []

    def interrupt_after_first_grpo_cell(line: str) -> None:
        seen.append(line)
        if line.startswith("[2/3] seed 0 oracle"):
            raise Interrupted

    with pytest.raises(Interrupted):
        run_eval(TINY, tmp_path, progress=False, echo=interrupt_after_first_grpo_cell)
    cells = tmp_path / "cells" / "seed-0"
    assert sorted(p.name for p in cells.glob("*.json")) == ["_seed.json", "oracle.json", "reference.json"]
    first = (cells / "oracle.json").stat().st_mtime_ns

    lines: list[str] = []
    result = run_eval(TINY, tmp_path, progress=False, echo=lines.append)
    progress = [line for line in lines if line.startswith("[")]
    assert progress[:2] == ["[1/3] seed 0 reference: already done (resumed)",
                            "[2/3] seed 0 oracle: already done (resumed)"]
    assert progress[2].startswith("[3/3] seed 0 mor-gn: mean own-domain win") and "ETA" in progress[2]
    assert (cells / "oracle.json").stat().st_mtime_ns == first
    (seed,) = result.seeds
    assert set(seed.win_own) == set(TINY.methods or ())
    assert set(seed.win_own["reference"].values()) == {0.5}
    own = {c.name: sum(p.domain in STYLES[c.style].domains for p in build_data(TINY).eval_prompts)
           for c in TINY.clients}
    for method in ("oracle", "mor-gn"):
        assert seed.grpo[method]["lora_delta_norm"] > 0
        for client, outcomes in seed.outcomes[method].items():  # per-prompt outcomes, kept for the bootstrap
            assert len(outcomes) == own[client] and set(outcomes) <= {0.0, 0.5, 1.0}
            assert sum(outcomes) / len(outcomes) == pytest.approx(seed.win_own[method][client])
    oracle = seed.weights_used["oracle"]
    assert all(sorted(w.values()) in ([0.0, 0.0, 1.0], [1 / 3] * 3) for w in oracle.values())

    out = tmp_path / "report"
    paths = write_report(result.to_dict(), out, command="mor eval --smoke")
    text = (out / "eval.md").read_text()
    assert "## Differences in mean own-domain win rate, with 95% confidence intervals" in text
    assert "GRPO + oracle domain router (reference row)" in text and "vs best single" in text
    saved = json.loads((out / "eval.json").read_text())
    assert set(saved["differences"]["rows"]) == {"oracle", "mor-gn"}
    gain = saved["differences"]["rows"]["mor-gn"]["reference"]
    assert gain[1] <= gain[0] <= gain[2]
    names = {p.name for p in paths}  # no uniform row, so no plot of differences to uniform
    assert names == {"eval.md", "eval.json", "win_rates.png", "rm_pair_accuracy.png"}


def test_cli_refuses_unknown_rows_and_two_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--smoke", "--quick"]) == 2
    assert main(["eval", "--smoke", "--methods", "mor,mor-magic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "mor eval: error: --quick and --smoke are two presets: choose one"
    assert err[1].startswith("mor eval: error: EvalConfig.methods: unknown ['mor-magic']; choose from reference, ")
