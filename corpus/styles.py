"""The HIDDEN preference rules: ground truth for labelling pairs and for evaluation.

Each client agent annotates its private pairs with one of these rules; the rule itself never
leaves this module (agents send reward *scores*, never the rule). Every rule scores ANY string
— including a policy's free-form generations — starting from the shared correctness verdict
of :func:`corpus.judging.judge` and adding what that annotator cares about. The scales are
chosen so that, in a rule's own domains, a correct answer always beats a wrong one whatever
its form (correctness weighs 3, all style terms together stay within +-1.4), while two
correct answers in different forms are ordered differently by different rules: that
disagreement is what the Mixture-of-Rewards router has to learn.
"""

from __future__ import annotations

from typing import Protocol

from corpus.judging import is_hedged, judge, mentions, word_count
from corpus.types import Prompt

CORRECTNESS_WEIGHT = 3.0
_CLINICAL_VOCABULARY = ("findings", "consistent with", "clinical", "assessment")
_LAY_VOCABULARY = ("looks like", "picture", "photo", "something like", "kind of", "stuff")


class PreferenceStyle(Protocol):
    name: str
    domains: tuple[str, ...]

    def utility(self, prompt: Prompt, response: str) -> float: ...


class MedicalStyle:
    """A hospital's radiologists: correct answers in precise clinical wording.

    utility = 3 x correctness (+1 right, -1 wrong, 0 no answer)
              + 0.8 if it uses the answer's clinical term (e.g. "fundus photography")
              + 0.3 if it uses clinical reporting vocabulary ("findings", "consistent with")
              - 0.6 for lay wording ("looks like", "picture"), - 0.5 for hedging,
              - 0.01 per word beyond 20 (reports are concise).
    """

    name = "medical"
    domains: tuple[str, ...] = ("medical",)

    def utility(self, prompt: Prompt, response: str) -> float:
        score = CORRECTNESS_WEIGHT * judge(prompt.facts, response).score
        if any(mentions(response, term) for term in prompt.facts.get("clinical", [])):
            score += 0.8
        if any(mentions(response, term) for term in _CLINICAL_VOCABULARY):
            score += 0.3
        if any(mentions(response, term) for term in _LAY_VOCABULARY):
            score -= 0.6
        if is_hedged(response):
            score -= 0.5
        return score - 0.01 * max(word_count(response) - 20, 0)


class FinanceStyle:
    """A bank's analysts: exact numbers, correct to 2 decimals, stated plainly.

    utility = 3 x correctness (numbers: +1 exact to the cent, 0.8 right value but fewer
              decimals, 0.3 within 1%, -1 otherwise; 0 if no number)
              + 0.6 if the number is written with exactly the cent (2 decimals) and is right
              + 0.2 if it names the currency ("$", "USD") - 0.7 for hedging
              - 0.05 per word beyond 8 (terse is better; this also applies off-domain).
    """

    name = "finance"
    domains: tuple[str, ...] = ("finance",)

    def utility(self, prompt: Prompt, response: str) -> float:
        verdict = judge(prompt.facts, response)
        score = CORRECTNESS_WEIGHT * verdict.score
        if verdict.exact:
            score += 0.6
        if "$" in response or mentions(response, "usd"):
            score += 0.2
        if is_hedged(response):
            score -= 0.7
        return score - 0.05 * max(word_count(response) - 8, 0)


class DetailStyle:
    """A general-purpose annotator: complete, descriptive sentences.

    utility = 3 x correctness
              + 0.5 if it is a complete sentence (capitalised, >= 5 words, ends with ".")
              + 0.3 per true visual attribute it adds beyond the question and its answer options
              (the image's colour, its shape) - 0.4 per false one (invented detail)
              - 0.5 for a bare one- or two-word answer - 1.0 for hedging.
    """

    name = "detail"
    domains: tuple[str, ...] = ("general",)

    def utility(self, prompt: Prompt, response: str) -> float:
        from corpus.source_general import COLORS, SHAPES

        score = CORRECTNESS_WEIGHT * judge(prompt.facts, response).score
        text = response.strip()
        words = word_count(text)
        if text[:1].isupper() and words >= 5 and text.endswith("."):
            score += 0.5
        if words <= 2:
            score -= 0.5
        facts = prompt.facts
        for attribute, vocabulary in (("color", COLORS), ("shape", SHAPES)):
            truth = facts.get(attribute)
            if truth is None:
                continue
            # only detail beyond the question and its answer options counts
            asked_about = {w for w in vocabulary if mentions(prompt.question, w)} | set(facts.get("options", ()))
            for word in vocabulary:
                if mentions(text, word) and word not in asked_about:
                    score += 0.3 if word == truth else -0.4
        if is_hedged(text):
            score -= 1.0
        return score


STYLES: dict[str, PreferenceStyle] = {s.name: s for s in (MedicalStyle(), FinanceStyle(), DetailStyle())}
DOMAIN_OWNER: dict[str, str] = {"medical": "medical", "finance": "finance", "general": "detail"}
