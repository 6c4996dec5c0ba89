"""Robust fusion: bounding what one member's well-formed but adversarial scores can do.

Range checks, calibration bounds and quarantine (:mod:`server.fusion`, :mod:`server.quarantine`)
stop garbage. They cannot stop a member whose scores are in range and finite but adversarial:
sign-flipped, scaled x100 after an honest calibration round, boosting one kind of answer, or
random. Against those the policy's ``[fusion]`` section offers three options, each wrapping
the existing pieces rather than branching inside them (the router stays a router, the mode
objects stay mode objects):

* ``clip_z``: every calibrated score is clipped to ``[-clip_z, +clip_z]`` before fusion, so
  one member's contribution to an item is at most ``w * clip_z`` however it scales;
* ``aggregate``: ``weighted`` (the router's ``sum w_k z_k``, today's behaviour), ``trimmed``
  (per item, the ``trim`` highest and ``trim`` lowest members' scores are dropped and the rest
  averaged with their router weights renormalised) or ``median`` (the router-weighted median:
  a member can move it only as far as the honest members' own spread);
* ``max_member_weight``: a cap on each member's router weight —
  :class:`server.router.capped.CappedRouter`, not here, because weights are plaintext in every
  mode and the cap therefore also holds in ``fused-only``.

Why clipping and robust aggregates need plaintext per-member scores: they are non-linear in
each member's score, and under ``fused-only`` the server only ever computes ``sum w_k * c_k``
over ciphertexts (CKKS adds and multiplies by plaintext; it cannot compare or sort). So
:meth:`RobustFusion.refusal_for` names what a mode cannot apply, and the mode objects refuse
it at construction (:class:`~server.errors.PrivacyModeError`) rather than silently ignoring it.

Two *mixing* options (issue #17, :mod:`server.router.mixing`) ride on the same object because
they too transform plaintext per-member scores: ``group_normalise`` (each member's scores
re-standardised within each GRPO group before mixing; the groups are the items sharing one
prompt, i.e. one router feature row) and ``disagreement_penalty`` (router-weighted mean minus
``lam`` x router-weighted std across members). The penalty replaces the weighted sum, so it
cannot be combined with a trimmed or median aggregate.

Invalid settings are a :class:`~server.errors.FusionError` (like
:class:`server.fusion.ScoreRange`); the policy schema validates the same ranges first, so an
operator meets them as policy errors naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from server.errors import FusionError, RouterConfigError
from server.router.mixing import MixingRule, normalise_within_groups

Aggregate = Literal["weighted", "trimmed", "median"]
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
_HALF_TOLERANCE = 1e-9  # cumulative weights are float sums: "exactly one half" within this


@dataclass(frozen=True)
class RobustFusion:
    """The policy's ``[fusion]`` clip and aggregate (see the module docstring); the default changes nothing."""

    clip_z: float | None = None
    aggregate: Aggregate = "weighted"
    trim: int = 1
    group_normalise: bool = False
    disagreement_penalty: float = 0.0

    def __post_init__(self) -> None:
        try:
            MixingRule(self.group_normalise, self.disagreement_penalty)
        except RouterConfigError as exc:
            raise FusionError(f"robust fusion: {exc}") from None
        if self.disagreement_penalty and self.aggregate != "weighted":
            raise FusionError(f"robust fusion: disagreement_penalty replaces the weighted sum; it cannot be combined "
                              f"with aggregate = {self.aggregate!r}")
        if self.clip_z is not None and not (isinstance(self.clip_z, int | float) and math.isfinite(self.clip_z)
                                            and self.clip_z > 0):
            raise FusionError(f"robust fusion: clip_z must be a finite number > 0 or None, got {self.clip_z!r}")
        if self.aggregate not in AGGREGATES:
            raise FusionError(f"robust fusion: aggregate must be one of {list(AGGREGATES)}, got {self.aggregate!r}")
        if isinstance(self.trim, bool) or not isinstance(self.trim, int) or self.trim < 1:
            raise FusionError(f"robust fusion: trim must be an integer >= 1, got {self.trim!r}")

    @property
    def mixing(self) -> MixingRule:
        return MixingRule(self.group_normalise, self.disagreement_penalty)

    @property
    def is_plain(self) -> bool:
        """True when the fused reward is the router's plain weighted sum (no aggregate or mixing option)."""
        return self.aggregate == "weighted" and self.mixing.is_plain

    @property
    def needs_plaintext(self) -> bool:
        """Does any option need each member's plaintext score (clipping, robust aggregates, mixing rules)?"""
        return self.clip_z is not None or not self.is_plain

    def refusal_for(self, mode: str, *, per_member_plaintext: bool) -> str | None:
        """Why ``mode`` cannot apply these options (None: it can); the mode objects raise it."""
        if per_member_plaintext or not self.needs_plaintext:
            return None
        wanted = [f"clip_z = {self.clip_z}"] if self.clip_z is not None else []
        wanted += [f"aggregate = {self.aggregate!r}"] if self.aggregate != "weighted" else []
        wanted += ["group_normalise = true"] if self.group_normalise else []
        wanted += [f"disagreement_penalty = {self.disagreement_penalty:g}"] if self.disagreement_penalty else []
        return (f"{mode}: {' and '.join(wanted)} need each member's plaintext score, and this mode only ever opens "
                "the weighted sum of ciphertexts; use max_member_weight (router weights are plaintext), or a mode "
                "where the server sees per-member vectors (ckks)")

    def clip(self, calibrated: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Calibrated scores clipped to ``±clip_z``, and how many were clipped per member (only non-zero counts)."""
        if self.clip_z is None:
            return dict(calibrated), {}
        bound = float(self.clip_z)
        out: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for agent, z in calibrated.items():
            outside = int((z.abs() > bound).sum())
            if outside:
                counts[agent] = outside
            out[agent] = z.clamp(-bound, bound)
        return out, counts

    def combine(self, weights: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``[B]`` fused rewards from ``[B, k]`` router weights (rows sum to 1) and ``[B, k]`` calibrated scores.

        ``groups`` (``[B]`` group index per item) is needed when ``group_normalise`` is set.
        """
        if weights.shape != scores.shape or weights.dim() != 2:
            raise FusionError(f"robust fusion: weights {list(weights.shape)} and scores {list(scores.shape)} "
                              "must both be [items, members]")
        if self.group_normalise and groups is None:
            raise FusionError("robust fusion: group_normalise needs each item's group")
        w, s = weights.to(torch.float64), scores.to(torch.float64)
        if self.aggregate == "weighted":
            return self.mixing.mix(w, s, groups)
        if self.group_normalise:
            s = normalise_within_groups(s, groups)  # type: ignore[arg-type]  # checked above
        if self.aggregate == "median" or s.shape[1] <= 2 * self.trim:
            return weighted_median(w, s)
        return trimmed_mean(w, s, self.trim)


def weighted_median(weights: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Per row, the score where the cumulative router weight (scores ascending) first reaches one half.

    When the cumulative weight lands exactly on one half (two members at 0.5 each, or an even
    number at equal weights) the two middle scores are averaged, as the ordinary median does.
    """
    order = scores.argsort(dim=1)
    s = scores.gather(1, order)
    cum = weights.gather(1, order).cumsum(dim=1)
    total = cum[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)
    cum = cum / total
    lower = (cum < 0.5 - _HALF_TOLERANCE).sum(dim=1, keepdim=True)
    upper = (cum <= 0.5 + _HALF_TOLERANCE).sum(dim=1, keepdim=True)
    last = s.shape[1] - 1
    return (s.gather(1, lower.clamp_max(last)) + s.gather(1, upper.clamp_max(last))).squeeze(1) / 2


def trimmed_mean(weights: torch.Tensor, scores: torch.Tensor, trim: int) -> torch.Tensor:
    """Per row, drop the ``trim`` lowest and highest scores; router-weighted mean of the rest.

    If the kept members carry no weight at all (a cap or fixed shares put it all on trimmed
    ones) they are averaged equally: trimming must never leave an item without a reward.
    """
    order = scores.argsort(dim=1)
    s = scores.gather(1, order)[:, trim:-trim]
    w = weights.gather(1, order)[:, trim:-trim]
    total = w.sum(dim=1)
    equal = s.mean(dim=1)
    weighted = (w * s).sum(dim=1) / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, weighted, equal)


NO_ROBUSTNESS = RobustFusion()

__all__ = ["AGGREGATES", "NO_ROBUSTNESS", "Aggregate", "RobustFusion", "trimmed_mean", "weighted_median"]
