"""Confidence intervals for differences between methods: a paired, two-level bootstrap.

What is compared is the table's headline number, the *mean own-domain win rate*: for each seed
and each member, the method's win rate over the reference on that member's own-domain held-out
prompts, averaged over members and seeds. Two sources of noise move it: the training randomness
of a seed (DP noise, initialisations, GRPO sampling) and the finite set of held-out prompts.
Each bootstrap replicate therefore resamples **seeds with replacement (seeds are blocks)** and,
within each drawn seed, **prompts with replacement** — the same prompt indices for both methods
(paired: a prompt that is hard for one method is usually hard for the other, and pairing removes
that shared part). The 95% interval is the 2.5th and 97.5th percentile of the replicated
difference (percentile bootstrap). With one seed only prompt noise is captured; the report says
how many seeds each interval rests on.

Outcomes are per prompt 1 / ½ / 0 (the method's answer has higher / equal / lower true utility
than the reference's), so the reference's own outcomes are all ½ and its "difference" to a method
is that method's gain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sim.errors import EvalRunError

# seed -> member -> per-prompt outcomes on that member's own domain
Outcomes = Sequence[Mapping[str, Sequence[float]]]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% bootstrap interval."""

    estimate: float
    low: float
    high: float
    seeds: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_list(self) -> list[float]:
        return [self.estimate, self.low, self.high]


def _diff_table(a: Outcomes, b: Outcomes) -> list[list[np.ndarray]]:
    if len(a) != len(b) or not a:
        raise EvalRunError(f"bootstrap: {len(a)} and {len(b)} seeds; need the same, at least one")
    table = []
    for seed_a, seed_b in zip(a, b, strict=True):
        if set(seed_a) != set(seed_b) or not seed_a:
            raise EvalRunError(f"bootstrap: members {sorted(seed_a)} and {sorted(seed_b)} differ")
        row = []
        for member in sorted(seed_a):
            x, y = np.asarray(seed_a[member], float), np.asarray(seed_b[member], float)
            if x.shape != y.shape or x.size == 0:
                raise EvalRunError(f"bootstrap: member {member!r}: {x.size} and {y.size} prompts; need the same, >0")
            row.append(x - y)
        table.append(row)
    return table


def replicate_means(diffs: list[list[np.ndarray]], replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``[replicates]`` bootstrap values of the mean (over seeds, then members) of per-prompt differences."""
    n_seeds, n_members = len(diffs), len(diffs[0])
    per_seed = np.empty((replicates, n_seeds))
    for s, row in enumerate(diffs):
        member_means = np.empty((replicates, n_members))
        for k, d in enumerate(row):
            idx = rng.integers(0, d.size, size=(replicates, d.size))
            member_means[:, k] = d[idx].mean(axis=1)
        per_seed[:, s] = member_means.mean(axis=1)
    seeds = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    return np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)


def point_mean(outcomes: Outcomes) -> float:
    """The headline number: mean over seeds of the mean over members of the own-domain win rate."""
    return float(np.mean([np.mean([np.mean(v) for v in seed.values()]) for seed in outcomes]))


def paired_difference(a: Outcomes, b: Outcomes, *, replicates: int = 2000, seed: int = 0) -> Interval:
    """Mean own-domain win rate of ``a`` minus ``b``, with its 95% paired two-level bootstrap interval."""
    diffs = _diff_table(a, b)
    values = replicate_means(diffs, replicates, np.random.default_rng(seed))
    estimate = float(np.mean([np.mean([d.mean() for d in row]) for row in diffs]))
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(estimate, float(low), float(high), len(diffs))


def gain_share(method: Outcomes, oracle: Outcomes, reference: Outcomes, *, replicates: int = 2000,
               seed: int = 0) -> Interval | None:
    """``(method - reference) / (oracle - reference)``: the share of the oracle router's gain reached.

    Bootstrapped with the same draws for numerator and denominator; None when the oracle gains
    nothing over the reference (no share to speak of).
    """
    num_d, den_d = _diff_table(method, reference), _diff_table(oracle, reference)
    den = float(np.mean([np.mean([d.mean() for d in row]) for row in den_d]))
    if den <= 0:
        return None
    num = float(np.mean([np.mean([d.mean() for d in row]) for row in num_d]))
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    nums, dens = replicate_means(num_d, replicates, rng_a), replicate_means(den_d, replicates, rng_b)
    ratios = nums[dens > 0] / dens[dens > 0]
    if ratios.size < replicates // 2:
        return None
    low, high = np.percentile(ratios, [2.5, 97.5])
    return Interval(num / den, float(low), float(high), len(num_d))


__all__ = ["Interval", "Outcomes", "gain_share", "paired_difference", "point_mean", "replicate_means"]
