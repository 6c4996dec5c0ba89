"""Before/after: the aligned policy against its reference on held-out test prompts.

Two questions a consortium member asks of the run:

* *Did the shared model move toward what **my** annotators prefer?* — per client, the win rate
  of the aligned policy's answer over the reference's under that client's hidden rule
  (:func:`sim.eval.metrics.win_rate`, the evaluation experiment's own measure; a tie counts one
  half), on every test prompt and on the client's own domain;
* *Did it stay correct?* — easy-vqa-style gold accuracy (:func:`server.vlm.gold_hit_rate`).

Both models answer greedily, so the comparison is deterministic; the reference is the
warm-started checkpoint GRPO started from, the aligned policy is it plus the LoRA adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ClientPreference:
    win_rate: float  # aligned vs reference, ties = 1/2, all test prompts
    win_rate_own_domain: float | None  # on the client's own domain(s) only
    utility_before: float
    utility_after: float
    win_rate_ci: tuple[float, float] = (0.5, 0.5)  # 95% bootstrap interval over prompts
    own_domain_ci: tuple[float, float] | None = None
    own_domain_prompts: int = 0

    @property
    def verdict(self) -> str:
        """In words: did alignment measurably move this member's own-domain answers?"""
        rate, ci = self.win_rate_own_domain, self.own_domain_ci
        if rate is None or ci is None:
            return "no prompts of its own domain"
        if ci[0] > 0.5:
            return "better (the 95% interval of the win rate is above 0.5)"
        if ci[1] < 0.5:
            return "worse (the 95% interval of the win rate is below 0.5)"
        return "no measurable effect (the 95% interval of the win rate contains 0.5)"


def bootstrap_ci(outcomes: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-prompt outcomes (1 win, 1/2 tie, 0 loss), resampling prompts."""
    import numpy as np

    values = np.asarray(outcomes, dtype=float)
    if values.size == 0:
        return (0.5, 0.5)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return (float(low), float(high))


@dataclass
class Evaluation:
    n_prompts: int
    gold_accuracy_before: float
    gold_accuracy_after: float
    clients: dict[str, ClientPreference] = field(default_factory=dict)
    changed_answers: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name, pref in self.clients.items():
            out["clients"][name]["verdict"] = pref.verdict
        return out


def compare(prompts: Sequence[Any], before: Sequence[str], after: Sequence[str], styles: Sequence[str]
            ) -> Evaluation:
    """Score two answer lists (reference, aligned) under each client's hidden rule and against gold."""
    from corpus import STYLES
    from server.vlm import gold_hit_rate

    result = Evaluation(n_prompts=len(prompts), gold_accuracy_before=gold_hit_rate(prompts, before),
                        gold_accuracy_after=gold_hit_rate(prompts, after),
                        changed_answers=sum(b != a for b, a in zip(before, after, strict=True)))
    for name in styles:
        rule = STYLES[name]
        u_before = [rule.utility(p, text) for p, text in zip(prompts, before, strict=True)]
        u_after = [rule.utility(p, text) for p, text in zip(prompts, after, strict=True)]
        own = [i for i, p in enumerate(prompts) if p.domain in rule.domains]
        outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for b, a in zip(u_before, u_after, strict=True)]
        result.clients[name] = ClientPreference(
            win_rate=sum(outcomes) / len(outcomes),
            win_rate_own_domain=sum(outcomes[i] for i in own) / len(own) if own else None,
            utility_before=sum(u_before) / len(u_before), utility_after=sum(u_after) / len(u_after),
            win_rate_ci=bootstrap_ci(outcomes),
            own_domain_ci=bootstrap_ci([outcomes[i] for i in own]) if own else None, own_domain_prompts=len(own))
    per_domain: dict[str, int] = {}
    for p, b, a in zip(prompts, before, after, strict=True):  # two per domain, so every member sees its own
        if per_domain.get(p.domain, 0) < 2:
            per_domain[p.domain] = per_domain.get(p.domain, 0) + 1
            result.examples.append({"domain": p.domain, "question": p.question, "gold": p.gold or "",
                                    "before": b, "after": a})
    return result


def evaluate_policy(reference: Path, adapter: Path, *, n_prompts: int, styles: Sequence[str], seed: int = 0,
                    max_new_tokens: int = 32) -> Evaluation:
    """Generate with the reference and with reference + adapter on ``n_prompts`` test prompts; compare."""
    from peft import PeftModel

    from corpus import build_prompts
    from server.vlm import generate_answers, load_vlm

    prompts = build_prompts(n_prompts, split="test", seed=seed)
    vlm = load_vlm(reference, device="cpu")
    before = generate_answers(vlm.model, vlm.processor, prompts, max_new_tokens=max_new_tokens, show_progress=True)
    aligned = PeftModel.from_pretrained(vlm.model, str(adapter))
    after = generate_answers(aligned, vlm.processor, prompts, max_new_tokens=max_new_tokens, show_progress=True)
    return compare(prompts, before, after, styles)
