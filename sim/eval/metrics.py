"""Held-out metrics: win rate under a client's TRUE rule, answer accuracy, mean ± std over seeds.

The true rules are the hidden ``corpus.styles.STYLES[...].utility`` functions that labelled
each client's pairs; no reward model is involved in measuring, so a method cannot score well
by fooling a learned reward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from corpus.judging import judge
from corpus.styles import PreferenceStyle
from corpus.types import Prompt
from sim.errors import EvalRunError


def win_outcomes(rule: PreferenceStyle, prompts: Sequence[Prompt], answers: Sequence[str],
                 reference: Sequence[str]) -> list[float]:
    """Per prompt 1 (aligned answer has higher true utility), 1/2 (equal), 0 (lower): what the bootstrap resamples."""
    if not (len(prompts) == len(answers) == len(reference)):
        raise EvalRunError(f"win rate: {len(prompts)} prompts, {len(answers)} answers, "
                           f"{len(reference)} reference answers differ in length")
    out = []
    for prompt, answer, ref in zip(prompts, answers, reference, strict=True):
        ours, theirs = rule.utility(prompt, answer), rule.utility(prompt, ref)
        out.append(1.0 if ours > theirs else 0.5 if ours == theirs else 0.0)
    return out


def win_rate(rule: PreferenceStyle, prompts: Sequence[Prompt], answers: Sequence[str],
             reference: Sequence[str]) -> float:
    """Mean over prompts of 1 (aligned answer has higher true utility), 1/2 (equal), 0 (lower).

    >>> from corpus.styles import STYLES
    >>> from corpus import build_prompts
    >>> ps = build_prompts(3, domain="general", split="test")
    >>> win_rate(STYLES["detail"], ps, ["x", "y", "z"], ["x", "y", "z"])
    0.5
    """
    if not prompts:
        raise EvalRunError("win rate: no prompts")
    outcomes = win_outcomes(rule, prompts, answers, reference)
    return sum(outcomes) / len(outcomes)


def answer_accuracy(prompts: Sequence[Prompt], answers: Sequence[str]) -> float:
    """Fraction of answers judged exactly right (a single, correct option; a number to the cent)."""
    if not prompts:
        raise EvalRunError("accuracy: no prompts")
    return sum(judge(p.facts, a).score >= 1.0 for p, a in zip(prompts, answers, strict=True)) / len(prompts)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value).

    >>> mean_std([0.25, 0.75])
    (0.5, 0.3535533905932738)
    """
    if not values:
        raise EvalRunError("mean/std of no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
