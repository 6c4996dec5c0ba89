"""`mor bench --smoke` keeps working: real CKKS, real Opacus, a real `mor server serve` with agent processes.

The smoke configuration is the benchmark itself at toy sizes (sections 2 ckks, 3 dp (frozen-mlp, tiny-vlt and a
built hf-text checkpoint, production DP step with CSPRNG noise and the alternatives), 4 ingest,
5 scaling, and 1 exchange in fused-only with 16 responses; 6 takes longer than this suite's
budget and runs with `mor bench`). What a user of the numbers cares about: every figure is a
finite, positive ratio to a baseline from the same run; under load the server lost nothing —
accepted = receipts = rows = audit entries; and section 1 timed the exchange it claims to:
its stages add up to the round, and the scores that crossed the wire are the in-process ones.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from sim.harness import OFFLINE_ENV, mor_command

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]


def _mor(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **OFFLINE_ENV}
    return subprocess.run(mor_command(args), cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path_factory.mktemp("bench")
    done = _mor("bench", "--smoke", "--sections", "2,3,4,5", "--repeats", "1", "--out", str(out))
    return done, json.loads((out / "bench.json").read_text())


def test_every_figure_is_a_finite_positive_ratio(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    done, report = smoke
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["failed"] == {}
    sections = {f["section"].split()[0] for f in report["figures"]}
    assert sections == {"2", "3", "4", "5"}
    for figure in report["figures"]:
        for key in ("value", "baseline", "ratio", "ratio_min", "ratio_max"):
            assert math.isfinite(figure[key]) and figure[key] > 0, (figure["name"], key, figure[key])
        assert figure["ratio_min"] <= figure["ratio"] <= figure["ratio_max"]
    assert report["machine"]["cores"] and report["command"].startswith("mor bench")
    assert "| section | figure |" in done.stdout  # the table is printed


def test_ckks_costs_more_than_plain_and_shrinks_per_score(smoke: tuple[subprocess.CompletedProcess[str], dict]
                                                          ) -> None:
    figures = {f["name"]: f for f in smoke[1]["figures"]}
    small, large = figures["N8192 n=64 wire"], figures["N8192 n=4096 wire"]
    assert small["ratio"] > 1 and large["ratio"] > 1  # a ciphertext is bigger than the plain scores
    assert large["value"] < small["value"]  # packing amortises: fewer bytes per score in a full vector
    assert figures["N8192 n=64 seal+open"]["extra"]["max_abs_error"] < 1e-3


def test_ingest_lost_nothing(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    checks = smoke[1]["checks"]["4"]
    assert checks["nothing_lost"] is True
    levels = {k: v for k, v in checks.items() if k != "nothing_lost"}
    assert levels, "no ingest level ran"
    for name, c in levels.items():
        assert c["accepted"] > 0, name
        assert c["accepted"] == c["receipts_valid"] == c["db_rows"] == c["audit_entries"], (name, c)
    assert smoke[1]["checks"]["5"]["rounds_skipped"] == 0


def test_dp_section_times_the_production_step_of_every_smoke_architecture(
        smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    from sim.bench.dp_step import SMOKE_ARCHS

    report = smoke[1]
    figures = {f["name"]: f for f in report["figures"] if f["section"] == "3 dp"}
    production = {name.split()[0]: f for name, f in figures.items() if f["extra"]["production"]}
    assert {name for name in production} == set(SMOKE_ARCHS)  # step and peak memory of each
    assert figures["frozen-mlp bk+CSPRNG [production] step"]["extra"]["clock"] == "process CPU time"
    assert "tiny-vlt flat+CSPRNG [production] step" in figures and "hf-text flat+CSPRNG [production] step" in figures
    assert "frozen-mlp bk+PRNG step" in figures  # the pilot noise, for contrast
    notes = report["notes"]["3"]
    # what cannot run is said, never given a number
    assert any(n.startswith("tiny-vlt: ghost+CSPRNG unavailable") for n in notes)
    assert not any(name.startswith("tiny-vlt ghost") for name in figures)


def test_bad_arguments_are_one_line_errors() -> None:
    done = _mor("bench", "--sections", "9", timeout=60)
    assert done.returncode == 2 and "each section is 1..6" in done.stderr
    done = _mor("bench", "--repeats", "0", "--sections", "2", timeout=60)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "--repeats 0" in done.stderr


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path_factory.mktemp("bench-exchange")
    done = _mor("bench", "--smoke", "--sections", "1", "--repeats", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((out / "bench.json").read_text())


def test_exchange_breakdown_adds_up_to_the_round(exchange: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    report = exchange[1]
    assert report["failed"] == {}
    figures = {f["name"]: f for f in report["figures"] if f["section"] == "1 exchange"}
    (round_name,) = [n for n in figures if n.startswith("fused-only: round")]
    whole = figures[round_name]
    stages = [figures[f"fused-only: {stage}"] for stage in ("score", "seal", "transfer", "open/fuse", "route")]
    for figure in [whole, *stages]:
        for key in ("value", "baseline", "ratio"):
            assert math.isfinite(figure[key]) and figure[key] > 0, (figure["name"], key, figure[key])
    assert sum(f["value"] for f in stages) == pytest.approx(whole["value"], rel=1e-9)  # one repeat: medians = values
    assert sum(f["ratio"] for f in stages) == pytest.approx(1.0, rel=1e-9)  # shares of the federated round
    assert whole["baseline_name"] == "in-process" and "16 responses" in round_name


def test_exchange_federated_scores_are_the_in_process_scores(exchange: tuple[subprocess.CompletedProcess[str], dict]
                                                             ) -> None:
    checks = exchange[1]["checks"]["1"]["fused-only"]
    assert checks["scores_max_abs_diff"] <= 1e-4  # each agent process scored exactly what the local model scores
    assert checks["fused_max_abs_diff"] <= 1e-3  # homomorphic fusion + key-holder decryption = in-process fusion
    assert checks["breakdown_sum_error_s"] < 1e-6 and checks["equal"] is True
