"""Candidate answers of known quality for a prompt: the raw material of preference pairs.

Every candidate is (correct | wrong) x a form. Forms differ per answer type so that each
hidden rule has something to like and dislike: ``terse``, ``sentence``, ``descriptive``,
``clinical``, ``lay``, ``hedged`` for categorical and yes/no answers; ``exact``,
``exact_sentence``, ``rounded``, ``approx`` and ``hedged`` for numbers. Wrong answers reuse
the same forms with a wrong option or a wrong number.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from corpus.types import Prompt


@dataclass(frozen=True)
class Candidate:
    text: str
    correct: bool
    form: str


def _describe(facts: dict[str, Any]) -> str:
    parts = [facts.get("color", ""), facts.get("shape", "shape")]
    return " ".join(p for p in parts if p)


def _categorical(prompt: Prompt, answer: str, correct: bool) -> list[Candidate]:
    facts, kind = prompt.facts, prompt.facts["kind"]
    out = [
        Candidate(answer.capitalize() if kind != "stain" else answer, correct, "terse"),
        Candidate(f"The {kind} is {answer}.", correct, "sentence"),
        Candidate(f"I think it might be {answer}, but I am not sure.", correct, "hedged"),
    ]
    if prompt.domain == "medical":
        support = f"consistent with {facts['clinical'][-1]}" if correct else "on clinical assessment"
        out.append(Candidate(f"Findings: {answer}, {support}.", correct, "clinical"))
        lay = facts["lay"] if correct else f"something like {answer}"
        out.append(Candidate(f"It looks like {lay}.", correct, "lay"))
    else:
        detail = _describe(facts) if correct else f"{answer} shape"
        out.append(Candidate(
            f"The image shows a single {detail} on a plain background, so the {kind} is {answer}.",
            correct, "descriptive"))
    return out


def _yes_no(prompt: Prompt, answer: str, correct: bool) -> list[Candidate]:
    question = prompt.question.rstrip("?").lower()
    detail = _describe(prompt.facts)
    return [
        Candidate(answer.capitalize(), correct, "terse"),
        Candidate(f"{answer.capitalize()}, that is my answer to '{question}'.", correct, "sentence"),
        Candidate(f"{answer.capitalize()}. The image shows a single {detail} on a plain background.",
                  correct, "descriptive"),
        Candidate(f"{answer.capitalize()}, probably, but I am not sure.", correct, "hedged"),
    ]


def _numeric(prompt: Prompt, value: float, correct: bool) -> list[Candidate]:
    facts = prompt.facts
    # rounded forms state the true value only if rounding keeps it within 1%
    close = {v: correct and abs(v - value) <= 0.01 * abs(value) for v in (round(value), round(value, 1))}
    subject = f"{facts['ticker']} in {facts.get('month', '')} {facts['year']}".replace("  ", " ")
    return [
        Candidate(f"{value:.2f}", correct, "exact"),
        Candidate(f"The closing price of {subject} was ${value:.2f}."
                  if facts["kind"] == "price" else f"It changed by ${value:.2f}.", correct, "exact_sentence"),
        Candidate(f"{round(value)}", close[round(value)], "rounded"),
        Candidate(f"About ${value:.1f}.", close[round(value, 1)], "approx"),
        Candidate(f"Maybe around {value:.2f}, I am not sure.", correct, "hedged"),
    ]


def _wrong_number(value: float, rng: random.Random) -> float:
    factor = rng.choice([-1, 1]) * rng.uniform(0.05, 0.35)
    wrong = round(value * (1 + factor) if abs(value) > 1 else value + factor * 10, 2)
    return wrong if abs(wrong - value) >= 0.01 else round(value + 1.0, 2)


def candidate_answers(prompt: Prompt, rng: random.Random) -> list[Candidate]:
    """All candidate forms for the correct answer and for one randomly chosen wrong answer."""
    facts = prompt.facts
    if "value" in facts:
        value = float(facts["value"])
        return _numeric(prompt, value, True) + _numeric(prompt, _wrong_number(value, rng), False)
    gold = str(facts["answer"])
    if facts["kind"] == "yes/no":
        return _yes_no(prompt, gold, True) + _yes_no(prompt, "no" if gold == "yes" else "yes", False)
    wrong = rng.choice(sorted(o for o in facts["options"] if o != gold))
    return _categorical(prompt, gold, True) + _categorical(prompt, wrong, False)
