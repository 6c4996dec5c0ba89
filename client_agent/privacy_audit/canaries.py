"""Canary preference pairs and who trains on which: the audit's controlled experiment.

Why canaries and not the member's own pairs: a membership test needs examples whose membership
the auditor decides at random, independently of everything else — then a correct guess can only
come from what the model remembers. Each canary is a preference pair unlike anything in the data
(a random blocky image, a question and two answers of random pseudo-words), so the model has no
reason to prefer one answer except having been trained on that very pair. Chosen and rejected
answers are drawn from the same distribution, so on a canary it never saw the model's margin
``score(chosen) − score(rejected)`` is symmetric around zero.

Canaries hold no private data: their seed is recorded so anyone can rebuild them. Which canaries
a model trained on is drawn from the OS CSPRNG (``secrets``) unless a seed is given.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np
from PIL import Image

from corpus.types import PreferencePair, Prompt

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "tr", "pl")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_CODAS = ("", "", "n", "r", "s", "l", "m", "x")
CANARY_DOMAIN = "canary"


def _word(rng: np.random.Generator) -> str:
    return "".join(str(rng.choice(part)) for part in (_ONSETS, _NUCLEI, _ONSETS, _NUCLEI, _CODAS))


def _phrase(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(_word(rng) for _ in range(int(rng.integers(low, high + 1))))


def _image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A random 4×4 grid of colours scaled up: distinct per canary even to a frozen CNN (noise is not)."""
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid, "RGB").resize(size, Image.Resampling.NEAREST)


def make_canaries(count: int, seed: int, *, image_size: tuple[int, int] = (64, 64)) -> list[PreferencePair]:
    """``count`` canary pairs, a function of ``seed`` only."""
    if count < 2:
        raise ValueError(f"need at least 2 canaries, got {count}")
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(count):
        prompt = Prompt(prompt_id=f"canary-{seed}-{index}", image=_image(rng, image_size),
                        question=f"What does the {_phrase(rng, 1, 2)} show?", domain=CANARY_DOMAIN, gold=None)
        chosen, rejected = _phrase(rng, 4, 7), _phrase(rng, 4, 7)
        pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected,
                                    meta={"canary": index, "seed": seed}))
    return pairs


def fresh_seed() -> int:
    """A seed from the OS CSPRNG (63 bits: fits numpy and JSON)."""
    return secrets.randbits(63)


def random_half(count: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with exactly ``count // 2`` members, uniformly at random."""
    mask = np.zeros(count, dtype=bool)
    mask[rng.permutation(count)[: count // 2]] = True
    return mask


def balanced_assignment(canaries: int, shadows: int, rng: np.random.Generator) -> np.ndarray:
    """``[shadows, canaries]`` membership: every canary is in exactly half of the shadow models.

    Why balanced rather than independent halves: the likelihood-ratio attack fits each canary's
    in- and out-score means from the shadows, so every canary needs both; with independent
    halves and 4 shadows, 1 canary in 8 would have no "in" model at all.
    """
    if shadows < 4 or shadows % 2:
        raise ValueError(f"shadow models: need an even number >= 4 (2 with and 2 without each canary), got {shadows}")
    mask = np.zeros((shadows, canaries), dtype=bool)
    for column in range(canaries):
        mask[rng.permutation(shadows)[: shadows // 2], column] = True
    return mask


def with_canaries(data: Sequence[PreferencePair], canaries: Sequence[PreferencePair],
                  members: np.ndarray) -> list[PreferencePair]:
    """The member's pairs plus the canaries ``members`` selects (order is irrelevant under Poisson sampling)."""
    return [*data, *(pair for pair, included in zip(canaries, members, strict=True) if included)]
