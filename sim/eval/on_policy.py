"""On-policy public pairs for the online router: the policy's own answers to public prompts, labelled.

What the server may do in every privacy mode: send a *public* round (public prompts, answers it
generated itself) to the members, whose per-member scores it may see on public rounds (in
``fused-only`` only with ``privacy.public_rounds_per_agent``), and have the consortium's public
annotators label pairs of those answers. Here the policy is the warm-started reference GRPO
starts from, so the pairs come from the distribution GRPO scores first (not the fixed candidate
styles of the offline public pairs); the annotators label by the rule owning each prompt's
domain, as they label the offline public pairs (:func:`corpus.build_public_pairs`), noiselessly.
Refreshing the pairs *during* GRPO (from the policy as it moves) is not done here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from corpus.styles import DOMAIN_OWNER, STYLES
from corpus.types import PreferencePair, Prompt
from sim.errors import EvalRunError

MAX_PAIRS_PER_PROMPT = 3


def label_pairs(prompts: Sequence[Prompt], answers: Sequence[Sequence[str]]) -> list[PreferencePair]:
    """Pairs of distinct-utility answers per prompt, the higher-utility one chosen (owner's rule)."""
    pairs: list[PreferencePair] = []
    for prompt, options in zip(prompts, answers, strict=True):
        rule = STYLES[DOMAIN_OWNER[prompt.domain]]
        scored = sorted({a: rule.utility(prompt, a) for a in options if a}.items(), key=lambda kv: -kv[1])
        kept = 0
        for (hi, u_hi), (lo, u_lo) in itertools.combinations(scored, 2):
            if u_hi > u_lo and kept < MAX_PAIRS_PER_PROMPT:
                pairs.append(PreferencePair(prompt, hi, lo, meta={"source": "on-policy", "margin": u_hi - u_lo}))
                kept += 1
    return pairs


def on_policy_pairs(reference: Path, prompts: Sequence[Prompt], *, samples: int, seed: int,
                    max_new_tokens: int) -> list[PreferencePair]:
    """Sample ``samples`` answers per public prompt from the reference policy and label pairs of them."""
    import torch

    from server.vlm import generate_answers, load_vlm

    vlm = load_vlm(reference, device="cpu")
    repeated = [p for p in prompts for _ in range(samples)]
    with torch.no_grad():
        flat = generate_answers(vlm.model, vlm.processor, repeated, do_sample=True, seed=seed,
                                max_new_tokens=max_new_tokens)
    grouped = [flat[i * samples:(i + 1) * samples] for i in range(len(prompts))]
    pairs = label_pairs(prompts, grouped)
    if len(pairs) < 2:
        raise EvalRunError(f"online router: the reference's {samples} samples on {len(prompts)} public prompts "
                           f"gave {len(pairs)} labelled pairs (answers too alike); raise online_samples")
    return pairs


__all__ = ["label_pairs", "on_policy_pairs"]
