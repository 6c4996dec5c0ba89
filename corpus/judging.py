"""Shared, style-neutral reading of a free-form answer: is it right, wrong, or undecidable?

The hidden preference rules (:mod:`corpus.styles`) all start from the same question —
did the response give the correct answer? — and differ only in what else they value. This
module answers that question from a prompt's ``facts`` for ANY string, including a policy's
free-form generations, so every rule judges correctness identically.

``facts`` layouts (written by the prompt sources):

* categorical: ``{"kind", "answer", "options": {option: [synonym, ...]}, ...}``
* yes/no: ``{"kind": "yes/no", "answer": "yes"|"no", ...}``
* numeric: ``{"kind", "value": float, "unit": "USD", ...}``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NUMBER = re.compile(r"(?<![\w.])[-+]?\$?\s?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
HEDGES: tuple[str, ...] = (
    "maybe", "perhaps", "possibly", "i think", "not sure", "might", "probably", "roughly",
    "approximately", "about", "around", "likely", "i guess", "could be",
)


@dataclass(frozen=True)
class Verdict:
    """How a response relates to the truth.

    ``score``: 1 correct, -1 wrong, 0 undecidable (no answer found), in between for partial
    credit (a number right to within 1% but not to the cent; two options named at once).
    ``exact``: a numeric answer matches to 2 decimals.
    """

    score: float
    exact: bool = False


def mentions(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive containment (``"ct"`` must not match ``"correct"``)."""
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()) + r"(?!\w)", text.lower()) is not None


def numbers_in(text: str) -> list[tuple[float, int]]:
    """Every number written in ``text`` with its count of decimals: ``"$1,234.5"`` -> (1234.5, 1)."""
    found = []
    for match in _NUMBER.finditer(text):
        whole = match.group(1).replace(",", "")
        frac = match.group(2) or ""
        sign = "-" if match.group(0).lstrip().startswith("-") else ""
        found.append((float(sign + whole + frac), max(len(frac) - 1, 0)))
    return found


def is_hedged(text: str) -> bool:
    """Whether the response signals uncertainty in words."""
    return any(mentions(text, h) for h in HEDGES) or "?" in text


def word_count(text: str) -> int:
    return len(re.findall(r"[\w$.%-]+", text))


def _numeric(facts: dict[str, Any], response: str) -> Verdict:
    value = float(facts["value"])
    found = numbers_in(response)
    if not found:
        return Verdict(0.0)
    # The answer is the number closest to the truth, so restating a year ("in 2005") does not
    # count as a wrong answer; a response that commits to no close number is wrong.
    best, decimals = min(found, key=lambda item: abs(item[0] - value))
    if abs(best - value) < 0.005 and decimals >= 2:
        return Verdict(1.0, exact=True)
    if abs(best - value) < 0.005:
        return Verdict(0.8)
    if abs(best - value) <= 0.01 * max(abs(value), 1e-9):
        return Verdict(0.3)
    return Verdict(-1.0)


def _yes_no(facts: dict[str, Any], response: str) -> Verdict:
    first = _YES_NO.search(response)
    if first is None:
        return Verdict(0.0)
    return Verdict(1.0 if first.group(1).lower() == facts["answer"] else -1.0)


def _categorical(facts: dict[str, Any], response: str) -> Verdict:
    named = {
        option
        for option, synonyms in facts["options"].items()
        if any(mentions(response, s) for s in [option, *synonyms])
    }
    gold = facts["answer"]
    if not named:
        return Verdict(0.0)
    if named == {gold}:
        return Verdict(1.0)
    if gold in named:
        return Verdict(-0.5)  # names the right answer among wrong ones: a non-answer
    return Verdict(-1.0)


def judge(facts: dict[str, Any], response: str) -> Verdict:
    """Correctness of ``response`` against ``facts``; never raises on odd strings."""
    if "value" in facts:
        return _numeric(facts, response)
    if facts.get("kind") == "yes/no":
        return _yes_no(facts, response)
    if "options" in facts:
        return _categorical(facts, response)
    return Verdict(0.0)
