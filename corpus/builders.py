"""Preference pairs, calibration batches and SFT examples built from the offline prompts.

Labelling: for two candidates a, b with hidden utilities u_a, u_b under a rule, the
annotator prefers a with Bradley–Terry probability sigmoid((u_a - u_b) / TEMPERATURE). The
small temperature keeps labels mostly, not perfectly, consistent — like real annotators —
and ``meta`` records the utilities, the margin and whether the sampled label agrees with
the noiseless rule, so label noise is measurable downstream.
"""

from __future__ import annotations

import math
import random
from typing import Any

from tqdm import tqdm

from corpus.candidates import Candidate, candidate_answers
from corpus.errors import SpecError
from corpus.prompts import build_prompts
from corpus.styles import DOMAIN_OWNER, STYLES, PreferenceStyle
from corpus.types import PreferencePair, Prompt

TEMPERATURE = 0.5
PAIRS_PER_PROMPT = 2
_MIN_GAP = 0.05  # candidates a rule cannot tell apart make no pair


def _label(
    prompt: Prompt, a: Candidate, b: Candidate, style: PreferenceStyle, rng: random.Random
) -> PreferencePair:
    u_a, u_b = style.utility(prompt, a.text), style.utility(prompt, b.text)
    p_a = 1.0 / (1.0 + math.exp(-(u_a - u_b) / TEMPERATURE))
    chosen, rejected, u_c, u_r = (a, b, u_a, u_b) if rng.random() < p_a else (b, a, u_b, u_a)
    meta: dict[str, Any] = {
        "style": style.name,
        "utility_chosen": round(u_c, 6),
        "utility_rejected": round(u_r, 6),
        "margin": round(u_c - u_r, 6),
        "agrees_with_rule": u_c > u_r,
        "forms": [chosen.form, rejected.form],
        "correct": [chosen.correct, rejected.correct],
    }
    return PreferencePair(prompt, chosen.text, rejected.text, meta)


def _pairs_for(prompts: list[Prompt], n_pairs: int, style_of: Any, rng: random.Random, desc: str
               ) -> list[PreferencePair]:
    pairs: list[PreferencePair] = []
    with tqdm(total=n_pairs, desc=desc, disable=n_pairs < 500, leave=False) as bar:
        for prompt in prompts:
            style = style_of(prompt)
            candidates = candidate_answers(prompt, rng)
            made = 0
            for _ in range(20):
                if made == PAIRS_PER_PROMPT or len(pairs) == n_pairs:
                    break
                a, b = rng.sample(candidates, 2)
                if abs(style.utility(prompt, a.text) - style.utility(prompt, b.text)) < _MIN_GAP:
                    continue
                pairs.append(_label(prompt, a, b, style, rng))
                made += 1
                bar.update(1)
    return pairs


def _prompts_for_pairs(n_pairs: int, domains: tuple[str, ...], split: str, seed: int, tag: str) -> list[Prompt]:
    # Ask for enough prompts that ties (skipped) never leave us short.
    n_prompts = math.ceil(n_pairs / PAIRS_PER_PROMPT * 1.25) + 2
    per = math.ceil(n_prompts / len(domains))
    prompts: list[Prompt] = []
    for d in domains:
        prompts += build_prompts(per, domain=d, split=split, seed=seed)
    random.Random(f"{tag}:order:{seed}").shuffle(prompts)
    return prompts


def _check_count(name: str, n: int) -> None:
    if n < 0:
        raise SpecError(f"{name} must be >= 0, got {n}")


def build_client_pairs(style: str, n_pairs: int, *, split: str = "train", seed: int = 0) -> list[PreferencePair]:
    """``n_pairs`` private pairs on the style's own domains, labelled by its hidden rule."""
    _check_count("n_pairs", n_pairs)
    if style not in STYLES:
        raise SpecError(f"unknown style {style!r}; expected one of {sorted(STYLES)}")
    rule = STYLES[style]
    prompts = _prompts_for_pairs(n_pairs, rule.domains, split, seed, f"client:{style}")
    rng = random.Random(f"client-pairs:{style}:{split}:{seed}")
    return _pairs_for(prompts, n_pairs, lambda _p: rule, rng, f"pairs ({style})")


def build_public_pairs(n_pairs: int, *, seed: int = 0) -> list[PreferencePair]:
    """Server-held pairs from the ``public`` split, each labelled by the rule owning its domain."""
    _check_count("n_pairs", n_pairs)
    prompts = _prompts_for_pairs(n_pairs, ("medical", "finance", "general"), "public", seed, "public")
    rng = random.Random(f"public-pairs:{seed}")
    return _pairs_for(prompts, n_pairs, lambda p: STYLES[DOMAIN_OWNER[p.domain]], rng, "public pairs")


def build_calibration_set(n: int, *, seed: int = 0) -> list[tuple[Prompt, str]]:
    """A public batch of (prompt, response) with responses of every form and quality."""
    _check_count("n", n)
    prompts = build_prompts(n, split="public", seed=seed + 7919)  # distinct from the public pairs' draw
    rng = random.Random(f"calibration:{seed}")
    return [(p, rng.choice(candidate_answers(p, rng)).text) for p in prompts]


def build_sft_examples(n: int, *, split: str = "train", seed: int = 0) -> list[tuple[Prompt, str]]:
    """Good answers to warm-start the policy: per prompt, the owner rule's favourite candidate."""
    _check_count("n", n)
    prompts = build_prompts(n, split=split, seed=seed + 104729)
    rng = random.Random(f"sft:{split}:{seed}")
    out = []
    for p in prompts:
        rule = STYLES[DOMAIN_OWNER[p.domain]]
        best = max(candidate_answers(p, rng), key=lambda c: rule.utility(p, c.text))
        out.append((p, best.text))
    return out
