"""The policy's ``[fusion]`` section: how far one member's adversarial scores can move the reward.

Beyond garbage (refused by range checks, calibration bounds and quarantine), a member may send
scores that are well formed but adversarial: sign-flipped, scaled x100 after an honest
calibration round, boosting one kind of answer, random. Three options bound its influence;
what each buys is measured, per attack, for 1 attacker among 3 and among 8 members, in
``docs/robustness.md`` (``python -m sim.eval.robustness``):

``max_member_weight``
    No member's router weight above this share (excess renormalised over the others). Router
    weights are plaintext in every mode, so this is the one option ``fused-only`` can apply.
    Must be at least ``1 / rounds.quorum``: a round fused at quorum could not respect it.
``clip_z``
    Every calibrated score clipped to ``[-clip_z, +clip_z]`` before fusion.
``aggregate``
    ``weighted`` (the router's weighted sum), ``trimmed`` (per item, ``trim`` highest and
    ``trim`` lowest members dropped, the rest weighted) or ``median`` (router-weighted median).

``group_normalise``
    Each member's calibrated scores re-standardised within each GRPO group (the answers to one
    prompt) before mixing, so one member's spread on a prompt cannot dominate the advantages.
``disagreement_penalty``
    ``lam`` in "router-weighted mean minus ``lam`` x router-weighted std across members"
    (conservative mixing, Coste et al. 2024); 0 (off) is the plain weighted sum.

Both are measured against the alternatives by ``mor eval`` (``docs/eval.md``).

``clip_z``, robust aggregates and both mixing options are non-linear in each member's score; under ``fused-only``
the server only opens ``sum w_k * score_k`` computed over ciphertexts, so they cannot apply
there and the policy refuses them rather than pretend.

Why every default is off: (1) they change the reward an honest consortium trains on — a median
of three noisy members is a noisier estimate than their weighted mean (measured: lower rank
agreement with the true utility when nobody attacks), and existing results were measured
without them; (2) no single cap suits every consortium, since it must be at least
``1 / quorum`` (a default of 0.5 would make every quorum-1 policy invalid); (3) a default
clip or median would make every shipped ``fused-only`` policy invalid. A consortium that
fears a dishonest member turns them on knowingly; ``docs/robustness.md`` gives the trade-off.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from policies.section import Section, rule


class Fusion(Section):
    """Robust fusion options (see the module docstring); all off by default."""

    max_member_weight: float | None = Field(default=None, gt=0, le=1)
    clip_z: float | None = Field(default=None, gt=0, le=1000)
    aggregate: Literal["weighted", "trimmed", "median"] = "weighted"
    trim: int | None = Field(default=None, ge=1, le=100)  # aggregate = "trimmed" only; unset there means 1
    group_normalise: bool = False
    disagreement_penalty: float = Field(default=0.0, ge=0, le=10)

    @property
    def trim_each_end(self) -> int:
        """Members dropped from each end per item under ``trimmed`` (1 unless ``trim`` says otherwise)."""
        return 1 if self.trim is None else self.trim

    @model_validator(mode="after")
    def _trim_means_trimmed(self) -> Fusion:
        if self.trim is not None and self.aggregate != "trimmed":
            raise rule("fusion.trim", f"applies only to aggregate = 'trimmed' (aggregate is {self.aggregate!r}): "
                                      "remove it or set aggregate = 'trimmed'")
        if self.disagreement_penalty and self.aggregate != "weighted":
            raise rule("fusion.disagreement_penalty",
                       f"replaces the weighted sum, so it cannot be combined with aggregate = {self.aggregate!r}: "
                       "set it to 0 or use aggregate = 'weighted'")
        return self


def check_fusion_fits(fusion: Fusion, *, mode: str, quorum: int) -> None:
    """The ``[fusion]`` rules that involve other sections (the privacy mode, the quorum); raises a policy rule."""
    if mode == "fused-only":
        why = ("needs each member's plaintext score, and under fused-only the server only opens the weighted sum "
               "of ciphertexts: remove it (max_member_weight applies in every mode) or use mode = 'ckks'")
        if fusion.clip_z is not None:
            raise rule("fusion.clip_z", f"clipping {why}")
        if fusion.aggregate != "weighted":
            raise rule("fusion.aggregate", f"{fusion.aggregate!r} {why}")
        if fusion.group_normalise:
            raise rule("fusion.group_normalise", f"normalising each member within a GRPO group {why}")
        if fusion.disagreement_penalty:
            raise rule("fusion.disagreement_penalty", f"the spread across members {why}")
    cap = fusion.max_member_weight
    if cap is not None and cap * quorum < 1:
        raise rule("fusion.max_member_weight",
                   f"{cap:g} x rounds.quorum ({quorum}) < 1: a round fused with {quorum} member(s) cannot keep each "
                   f"at most {cap:g}; use >= {1 / quorum:.4g} or raise rounds.quorum to >= {math.ceil(1 / cap)}")
    trim = fusion.trim_each_end
    if fusion.aggregate == "trimmed" and quorum <= 2 * trim:
        raise rule("fusion.trim", f"trimming {trim} member(s) from each end needs more than {2 * trim} "
                                  f"members, but rounds.quorum = {quorum} lets a round fuse with {quorum}: raise the "
                                  f"quorum{', lower trim' if trim > 1 else ''} or use aggregate = 'median'")


__all__ = ["Fusion", "check_fusion_fits"]
