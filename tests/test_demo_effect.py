"""The demo's before/after verdict: numbers with a 95% interval, and words also when there is no effect."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corpus import build_prompts
from sim.demo.evaluate import bootstrap_ci, compare
from sim.demo.report import render_html
from sim.harness import OFFLINE_ENV, mor_command

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_prompts() -> None:
    few = bootstrap_ci([1.0, 0.0] * 10)
    many = bootstrap_ci([1.0, 0.0] * 500)
    assert few[0] < 0.5 < few[1] and many[0] < 0.5 < many[1]
    assert (many[1] - many[0]) < (few[1] - few[0]) / 3
    assert bootstrap_ci([1.0] * 30) == (1.0, 1.0)
    assert bootstrap_ci([]) == (0.5, 0.5)


def _medical_answers(prompts: list, *, right: bool) -> list[str]:
    """Answers in the medical rule's own form: right (the gold modality) or wrong (another one)."""
    answers = []
    for p in prompts:
        answer = p.gold if right else next(o for o in p.facts["options"] if o != p.gold)
        answers.append(f"Findings: {answer}.")
    return answers


def test_verdict_says_better_worse_or_no_effect_in_words() -> None:
    prompts = build_prompts(24, domain="medical", split="test", seed=3)
    assert all(p.gold for p in prompts)
    right, wrong = _medical_answers(prompts, right=True), _medical_answers(prompts, right=False)
    better = compare(prompts, wrong, right, ["medical", "finance"])
    assert better.clients["medical"].own_domain_ci is not None
    assert better.clients["medical"].own_domain_ci[0] > 0.5 and better.clients["medical"].verdict.startswith("better")
    worse = compare(prompts, right, wrong, ["medical"])
    assert worse.clients["medical"].verdict.startswith("worse")
    same = compare(prompts, right, right, ["medical", "finance"])
    assert same.clients["medical"].verdict.startswith("no measurable effect")
    assert same.clients["finance"].verdict == "no prompts of its own domain"  # no finance prompt here
    page = render_html({"evaluation": better.to_dict(), "model": {"name": "the test policy"}})
    assert "Effect of alignment" in page and "medical: better" in page and "the test policy" in page


def test_examples_cover_every_domain_with_their_gold_answer() -> None:
    prompts = build_prompts(30, split="test", seed=0)
    answers = ["An answer." for _ in prompts]
    result = compare(prompts, answers, answers, ["medical", "finance", "detail"])
    domains = [e["domain"] for e in result.examples]
    assert set(domains) == {p.domain for p in prompts} and max(domains.count(d) for d in domains) == 2
    assert all("gold" in e for e in result.examples)


@pytest.mark.parametrize("args", [["--model", "x", "--toy-model"]])
def test_demo_refuses_two_policy_models(args: list[str], tmp_path: Path) -> None:
    run = subprocess.run(mor_command(["demo", "--out", str(tmp_path / "o"), *args]), cwd=REPO_ROOT,
                         env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--model and --toy-model: choose one policy model" in run.stderr
