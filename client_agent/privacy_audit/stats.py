"""The statistics of a membership-inference audit: operating points, Clopper–Pearson, the ε bound.

Why an ε *lower bound* and not just an AUC: an (ε, δ)-DP training bounds every membership test
on one training example by ``TPR ≤ e^ε · FPR + δ`` (Kairouz, Oh & Viswanath 2015; used for
auditing by Jagielski, Ullman & Oprea 2020 and Nasr et al. 2021). An attack that reaches a given
(TPR, FPR) therefore proves ``ε ≥ log((TPR − δ) / FPR)`` — a number directly comparable with the
ε the member claims. An AUC has no such reading.

Why Clopper–Pearson: TPR and FPR are binomial proportions measured on a few hundred canaries, so
their point estimates are noisy; the exact (Clopper–Pearson 1934) interval is valid at any sample
size, also at 0 or n successes, where normal approximations fail. The reported lower bound uses
the lower end of TPR and the upper end of FPR, each from a two-sided ``confidence`` interval, so
by the union bound it holds with probability at least ``confidence``.

Implemented with the standard library (binomial tails in log space, bisection) so the agent needs
no statistics package; ``tests/test_privacy_audit.py`` checks it against SciPy's beta quantiles.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(X ≤ k)`` for ``X ~ Binomial(n, p)``, summed in log space (exact enough for n up to ~10^6)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    terms = [base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _bisect(increasing: bool, f: Any, target: float) -> float:
    """The p in [0, 1] where the monotone ``f(p)`` crosses ``target`` (to 1e-12)."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact two-sided ``confidence`` interval for a binomial proportion.

    Lower end: the p with ``P(X ≥ k; p) = α/2`` (0 when k = 0); upper end: the p with
    ``P(X ≤ k; p) = α/2`` (1 when k = n); α = 1 − confidence.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"clopper_pearson: need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"clopper_pearson: confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2
    lower = 0.0 if successes == 0 else _bisect(
        True, lambda p: 1.0 - binomial_cdf(successes - 1, trials, p), tail)
    upper = 1.0 if successes == trials else _bisect(
        False, lambda p: binomial_cdf(successes, trials, p), tail)
    return lower, upper


def epsilon_bound(tpr: float, fpr: float, delta: float) -> float:
    """``log((TPR − δ) / FPR)``, floored at 0 (no evidence of leakage); ``inf`` when FPR = 0 < TPR − δ."""
    gain = tpr - delta
    if gain <= 0.0 or gain <= fpr:
        return 0.0
    if fpr <= 0.0:
        return math.inf
    return math.log(gain / fpr)


@dataclass(frozen=True)
class OperatingPoint:
    """One attack at one target FPR: the threshold used, the counts, the rates and the ε they imply."""

    target_fpr: float
    threshold: float
    true_positives: int
    members: int
    false_positives: int
    non_members: int
    tpr: float
    fpr: float
    tpr_interval: tuple[float, float]
    fpr_interval: tuple[float, float]
    epsilon_point: float       # log((TPR − δ)/FPR) at the measured rates (inf with no false positive)
    epsilon_lower: float       # the same with TPR's lower and FPR's upper confidence ends: the audit's claim
    epsilon_upper: float       # with TPR's upper and FPR's lower ends (inf with no false positive)
    epsilon_ceiling: float     # the largest epsilon_lower these canaries could show (a perfect attack)

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


def operating_point(member: np.ndarray, non_member: np.ndarray, target_fpr: float, *, delta: float,
                    confidence: float = 0.95) -> OperatingPoint:
    """Guess "member" when the signal is strictly above the threshold that keeps FPR ≤ ``target_fpr``.

    The threshold is the ``(⌊target_fpr · n_out⌋ + 1)``-th largest non-member signal, so at most
    ``⌊target_fpr · n_out⌋`` non-members pass it; with fewer than ``1 / target_fpr`` non-members that
    is zero false positives (the most demanding test these canaries allow).
    """
    member, non_member = np.asarray(member, float), np.asarray(non_member, float)
    if member.size == 0 or non_member.size == 0:
        raise ValueError("operating_point: need at least one member and one non-member signal")
    if not (np.isfinite(member).all() and np.isfinite(non_member).all()):
        raise ValueError("operating_point: signals must be finite")
    allowed = min(int(math.floor(target_fpr * non_member.size + 1e-9)), non_member.size)
    ranked = np.sort(non_member)[::-1]
    threshold = float(ranked[min(allowed, ranked.size - 1)])
    if allowed >= ranked.size:  # the target allows every non-member: everything is guessed "member"
        threshold = float(min(member.min(), non_member.min())) - 1.0
    tp, fp = int((member > threshold).sum()), int((non_member > threshold).sum())
    n_in, n_out = int(member.size), int(non_member.size)
    tpr_ci, fpr_ci = clopper_pearson(tp, n_in, confidence), clopper_pearson(fp, n_out, confidence)
    best_tpr = clopper_pearson(n_in, n_in, confidence)[0]
    best_fpr = clopper_pearson(allowed, n_out, confidence)[1]  # a perfect attack still has `allowed` FPs
    return OperatingPoint(
        target_fpr=target_fpr, threshold=threshold, true_positives=tp, members=n_in, false_positives=fp,
        non_members=n_out, tpr=tp / n_in, fpr=fp / n_out, tpr_interval=tpr_ci, fpr_interval=fpr_ci,
        epsilon_point=epsilon_bound(tp / n_in, fp / n_out, delta),
        epsilon_lower=epsilon_bound(tpr_ci[0], fpr_ci[1], delta),
        epsilon_upper=epsilon_bound(tpr_ci[1], fpr_ci[0], delta),
        epsilon_ceiling=epsilon_bound(best_tpr, best_fpr, delta),
    )


def auc(member: np.ndarray, non_member: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney: P(member signal > non-member signal), ties count ½)."""
    m, o = np.asarray(member, float)[:, None], np.asarray(non_member, float)[None, :]
    return float(((m > o).sum() + 0.5 * (m == o).sum()) / (m.size * o.size))
