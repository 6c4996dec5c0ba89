"""Mixing rules applied to per-member scores *after* the router chose its weights.

The router gives, per prompt, weights ``w_k(x)`` (a function of the prompt only). How the
members' calibrated scores ``z_k`` for the answers to that prompt are then combined is a
separate choice, made here:

* **group normalisation** (multi-reward GRPO / GDPO style): within each GRPO group (the answers
  to one prompt), each member's scores are re-standardised to mean 0 and unit std *before*
  mixing, so a member whose scores spread widely on this prompt cannot dominate the group's
  advantages merely by scale; a member that scores the whole group alike contributes 0 there.
* **conservative mixing** (Coste et al., "Reward Model Ensembles Help Mitigate
  Overoptimization", ICLR 2024): ``sum_k w_k z_k - lam * sqrt(sum_k w_k (z_k - mean)^2)``, the
  router-weighted mean minus ``lam`` times the router-weighted std across members, so answers
  the members disagree on are rewarded less and the policy is not pushed towards whatever
  fools one member.

Both read each member's plaintext score, so only modes where the server holds per-member
vectors (``tls-only``, ``ckks``) can apply them; ``fused-only`` opens only the weighted sum of
ciphertexts, and the policy refuses them there (:func:`policies.fusion.check_fusion_fits`).
Neither changes the weights: they stay a function of the prompt alone.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from server.errors import RouterConfigError, RouterInputError

_STD_FLOOR = 1e-8  # a member that scores a whole group alike has std 0: it then contributes 0 there


def group_ids(keys: Sequence[Hashable]) -> torch.Tensor:
    """``[B]`` integer group index per item, in order of first appearance.

    >>> group_ids(["p1", "p1", "p2", "p1"]).tolist()
    [0, 0, 1, 0]
    """
    seen: dict[Hashable, int] = {}
    return torch.tensor([seen.setdefault(k, len(seen)) for k in keys], dtype=torch.long)


def feature_groups(features: torch.Tensor) -> torch.Tensor:
    """Group index per item from its prompt features: the answers to one prompt share one feature row.

    This is how the networked server finds GRPO groups without being told: the router's input is
    the prompt's embedding, identical for every answer to it.
    """
    if features.dim() != 2:
        raise RouterInputError(f"features must be [B, D], got shape {list(features.shape)}")
    _, inverse = torch.unique(features.detach().cpu(), dim=0, return_inverse=True)
    return group_ids(inverse.tolist())


def normalise_within_groups(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` scores, each column re-standardised (mean 0, std 1) within each group of ``groups``.

    >>> s = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 5.0]])
    >>> normalise_within_groups(s, torch.tensor([0, 0, 1])).tolist()
    [[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]
    """
    if scores.dim() != 2 or groups.shape != (scores.shape[0],):
        raise RouterInputError(f"scores must be [B, K] and groups [B]; got {list(scores.shape)} and "
                               f"{list(groups.shape)}")
    s = scores.to(torch.float64)
    out = torch.zeros_like(s)
    for g in torch.unique(groups).tolist():
        rows = groups == g
        block = s[rows]
        centred = block - block.mean(dim=0, keepdim=True)
        std = block.std(dim=0, unbiased=False, keepdim=True)
        out[rows] = torch.where(std > _STD_FLOOR, centred / std.clamp_min(_STD_FLOOR), torch.zeros_like(centred))
    return out


def conservative_mix(weights: torch.Tensor, scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """``[B]`` router-weighted mean minus ``penalty`` x router-weighted std across members.

    >>> w = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    >>> conservative_mix(w, torch.tensor([[1.0, 1.0], [2.0, 0.0]]), 1.0).tolist()
    [1.0, 0.0]
    """
    if weights.shape != scores.shape or weights.dim() != 2:
        raise RouterInputError(f"weights {list(weights.shape)} and scores {list(scores.shape)} must both be "
                               "[items, members]")
    w, s = weights.to(torch.float64), scores.to(torch.float64)
    mean = (w * s).sum(dim=1)
    spread = (w * (s - mean.unsqueeze(1)) ** 2).sum(dim=1).clamp_min(0).sqrt()
    return mean - penalty * spread


@dataclass(frozen=True)
class MixingRule:
    """How weighted member scores become one reward: optional group normalisation, optional penalty."""

    group_normalise: bool = False
    disagreement_penalty: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.group_normalise, bool):
            raise RouterConfigError(f"mixing: group_normalise must be true or false, got {self.group_normalise!r}")
        lam = self.disagreement_penalty
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not (math.isfinite(lam) and 0 <= lam <= 10):
            raise RouterConfigError(f"mixing: disagreement_penalty must be a number in [0, 10], got {lam!r}")

    @property
    def is_plain(self) -> bool:
        """True when this is the router's plain weighted sum (what fused-only computes)."""
        return not self.group_normalise and self.disagreement_penalty == 0

    def describe(self) -> str:
        parts = ["group-normalised"] if self.group_normalise else []
        parts += [f"mean - {self.disagreement_penalty:g} std"] if self.disagreement_penalty else []
        return " + ".join(parts) or "weighted sum"

    def mix(self, weights: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """``[B]`` rewards from ``[B, K]`` weights and calibrated scores; ``groups`` needed to normalise."""
        if self.group_normalise:
            if groups is None:
                raise RouterInputError("mixing: group_normalise needs the GRPO group of every item")
            scores = normalise_within_groups(scores, groups)
        return conservative_mix(weights, scores, float(self.disagreement_penalty))


PLAIN_MIXING = MixingRule()

__all__ = ["PLAIN_MIXING", "MixingRule", "conservative_mix", "feature_groups", "group_ids",
           "normalise_within_groups"]
