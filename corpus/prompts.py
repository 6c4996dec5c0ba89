"""One entry point for prompts from all three offline sources, by domain and split."""

from __future__ import annotations

import random

from corpus.errors import SpecError
from corpus.source_finance import finance_prompts
from corpus.source_general import general_prompts
from corpus.source_medical import medical_prompts
from corpus.splits import SPLITS
from corpus.types import DOMAINS, Prompt

_SOURCES = {"medical": medical_prompts, "finance": finance_prompts, "general": general_prompts}


def build_prompts(n: int, *, domain: str | None = None, split: str = "train", seed: int = 0) -> list[Prompt]:
    """``n`` distinct prompts, deterministic for ``seed``.

    ``domain=None`` mixes the three domains evenly (interleaved: medical, finance, general).
    ``split`` is ``"train"``, ``"public"`` (server-held) or ``"test"``; splits never share a
    source image.
    """
    if n < 0:
        raise SpecError(f"n must be >= 0, got {n}")
    if split not in SPLITS:
        raise SpecError(f"unknown split {split!r}; expected one of {SPLITS}")
    if domain is not None and domain not in DOMAINS:
        raise SpecError(f"unknown domain {domain!r}; expected one of {DOMAINS} or None")
    domains = (domain,) if domain else DOMAINS
    per_domain = {d: n // len(domains) + (1 if i < n % len(domains) else 0) for i, d in enumerate(domains)}
    batches = {
        d: _SOURCES[d](count, split, random.Random(f"prompts:{d}:{split}:{seed}"))
        for d, count in per_domain.items()
    }
    out: list[Prompt] = []
    for i in range(max(per_domain.values(), default=0)):
        out.extend(batches[d][i] for d in domains if i < len(batches[d]))
    return out
