"""Two membership-inference attacks that use only what a server sees: scores on candidate answers.

The server sends candidate answers and receives one score per answer; for a canary it could ask
for the chosen and the rejected answer and take the **margin** ``score(chosen) − score(rejected)``.
Training with the Bradley–Terry loss pushes exactly that margin up on pairs in the training set,
so the margin is the natural membership signal:

* **Score threshold** (Yeom et al. 2018, with the margin as the "loss"): guess "member" when the
  margin is large. Needs no other model.
* **Likelihood ratio, LiRA** (Carlini et al., *Membership Inference Attacks From First
  Principles*, IEEE S&P 2022): shadow models trained the same way, half of them with each canary,
  give per canary the distribution of its margin when it was in and when it was out; the signal
  is the Gaussian log-likelihood ratio of the target's margin. With few shadows (2 in, 2 out per
  canary here) a per-canary variance is hopeless, so the variances are pooled over canaries —
  the "global variance" variant the paper recommends for small shadow counts. Per-canary means
  still remove each canary's own difficulty, which is what makes LiRA strong at low FPR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from client_agent.privacy_audit.stats import OperatingPoint, auc, operating_point

TARGET_FPRS = (0.01, 0.001)
ATTACKS = ("threshold", "lira")


def threshold_signal(margins: np.ndarray) -> np.ndarray:
    """The margin itself: larger = more likely a member."""
    return np.asarray(margins, float)


def _pooled_std(margins: np.ndarray, mask: np.ndarray, means: np.ndarray) -> float:
    """Standard deviation of the shadows' margins around each canary's own mean, pooled over canaries."""
    residuals = (margins - means[None, :])[mask]
    dof = int(mask.sum()) - int(mask.any(axis=0).sum())
    if dof < 1:
        raise ValueError("LiRA: need at least 2 shadow models with and 2 without each canary")
    return max(float(np.sqrt((residuals**2).sum() / dof)), 1e-12)


def lira_signal(target: np.ndarray, shadow_margins: np.ndarray, shadow_members: np.ndarray) -> np.ndarray:
    """``log N(m; μ_in, σ_in) − log N(m; μ_out, σ_out)`` per canary (``[S, n]`` shadow margins and membership)."""
    target = np.asarray(target, float)
    shadow_margins, shadow_members = np.asarray(shadow_margins, float), np.asarray(shadow_members, bool)
    if shadow_margins.shape != shadow_members.shape or shadow_margins.shape[1:] != target.shape:
        raise ValueError(f"LiRA: shapes differ: target {target.shape}, shadows {shadow_margins.shape}, "
                         f"membership {shadow_members.shape}")
    n_in, n_out = shadow_members.sum(axis=0), (~shadow_members).sum(axis=0)
    if (n_in < 1).any() or (n_out < 1).any():
        raise ValueError("LiRA: every canary needs shadow models with and without it")
    mu_in = np.where(shadow_members, shadow_margins, 0.0).sum(axis=0) / n_in
    mu_out = np.where(~shadow_members, shadow_margins, 0.0).sum(axis=0) / n_out
    sd_in = _pooled_std(shadow_margins, shadow_members, mu_in)
    sd_out = _pooled_std(shadow_margins, ~shadow_members, mu_out)
    return (np.log(sd_out / sd_in) - (target - mu_in) ** 2 / (2 * sd_in**2)
            + (target - mu_out) ** 2 / (2 * sd_out**2))


@dataclass(frozen=True)
class AttackResult:
    """One attack on one target model: its AUC and its operating points at the target FPRs."""

    attack: str
    auc: float
    points: tuple[OperatingPoint, ...]

    def best_epsilon_lower(self) -> float:
        return max(p.epsilon_lower for p in self.points)

    def as_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "auc": self.auc, "points": [p.as_dict() for p in self.points]}


def evaluate(attack: str, signal: np.ndarray, members: np.ndarray, *, delta: float, confidence: float,
             target_fprs: tuple[float, ...] = TARGET_FPRS) -> AttackResult:
    """Split ``signal`` by the target's true membership and read off AUC and the operating points."""
    signal, members = np.asarray(signal, float), np.asarray(members, bool)
    inside, outside = signal[members], signal[~members]
    return AttackResult(attack, auc(inside, outside), tuple(
        operating_point(inside, outside, fpr, delta=delta, confidence=confidence) for fpr in target_fprs))


def run_attacks(margins: np.ndarray, members: np.ndarray, *, delta: float, confidence: float,
                target_fprs: tuple[float, ...] = TARGET_FPRS) -> dict[str, AttackResult]:
    """Both attacks on model 0 of ``margins``/``members`` (``[1 + S, n]``); models 1… are its shadows."""
    margins, members = np.asarray(margins, float), np.asarray(members, bool)
    target, target_in = margins[0], members[0]
    signals = {"threshold": threshold_signal(target), "lira": lira_signal(target, margins[1:], members[1:])}
    return {name: evaluate(name, signals[name], target_in, delta=delta, confidence=confidence,
                           target_fprs=target_fprs) for name in ATTACKS}
