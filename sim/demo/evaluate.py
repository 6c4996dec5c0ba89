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


@dataclass
class Evaluation:
    n_prompts: int
    gold_accuracy_before: float
    gold_accuracy_after: float
    clients: dict[str, ClientPreference] = field(default_factory=dict)
    changed_answers: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(prompts: Sequence[Any], before: Sequence[str], after: Sequence[str], styles: Sequence[str]
            ) -> Evaluation:
    """Score two answer lists (reference, aligned) under each client's hidden rule and against gold."""
    from corpus import STYLES
    from server.vlm import gold_hit_rate
    from sim.eval.metrics import win_rate

    result = Evaluation(n_prompts=len(prompts), gold_accuracy_before=gold_hit_rate(prompts, before),
                        gold_accuracy_after=gold_hit_rate(prompts, after),
                        changed_answers=sum(b != a for b, a in zip(before, after, strict=True)))
    for name in styles:
        rule = STYLES[name]
        u_before = [rule.utility(p, text) for p, text in zip(prompts, before, strict=True)]
        u_after = [rule.utility(p, text) for p, text in zip(prompts, after, strict=True)]
        own = [i for i, p in enumerate(prompts) if p.domain in rule.domains]
        result.clients[name] = ClientPreference(
            win_rate=win_rate(rule, prompts, after, before),
            win_rate_own_domain=win_rate(rule, [prompts[i] for i in own], [after[i] for i in own],
                                         [before[i] for i in own]) if own else None,
            utility_before=sum(u_before) / len(u_before), utility_after=sum(u_after) / len(u_after))
    result.examples = [{"domain": p.domain, "question": p.question, "before": b, "after": a}
                       for p, b, a in list(zip(prompts, before, after, strict=True))[:6]]
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
