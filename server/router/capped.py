"""A cap on any one member's router weight, as a router wrapping a router.

Why a wrapper: the policy's ``fusion.max_member_weight`` must hold whatever router is in use
(uniform, fixed shares, learned) and in every privacy mode. Router weights depend on the
prompt only and are plaintext everywhere — under ``fused-only`` too, where they multiply the
ciphertexts — so capping them is the one robustness option every mode can apply. Wrapping
keeps the inner routers ignorant of it (they do not branch on robustness, see
:mod:`server.router.base`), and the wrapper's digest covers the cap and the inner router, so
the audit log records exactly which weights fused a round.

The cap: in each row, weights above ``max_weight`` are set to it and the excess is shared by
the other answering members in proportion to their weights (equally if those carry none),
repeated until no weight exceeds the cap ("water-filling"; it keeps the inner router's ratios
among the uncapped members). When fewer members answered than ``1 / max_weight``, no split
respects the cap; the row then gets equal weights, the most even split there is. The policy
refuses a cap below ``1 / rounds.quorum``, so at quorum this never happens.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from server.errors import RouterConfigError
from server.router.base import RouterBase, check_features

_SLACK = 1e-12  # weights are float sums: "at the cap" within this


class CappedRouter(RouterBase):
    """``inner``'s weights with no member above ``max_weight`` (see the module docstring)."""

    kind: ClassVar[str] = "capped"

    def __init__(self, inner: RouterBase, max_weight: float) -> None:
        if not isinstance(inner, RouterBase):
            raise RouterConfigError(f"capped router: inner must be a router, got {type(inner).__name__}")
        if isinstance(max_weight, bool) or not isinstance(max_weight, int | float) or not (
                math.isfinite(max_weight) and 0 < max_weight <= 1):
            raise RouterConfigError(f"capped router: max_weight must be a number in (0, 1], got {max_weight!r}")
        self.inner, self.max_weight = inner, float(max_weight)
        self.agents = inner.agents

    @property
    def inner_kind(self) -> str:
        """The kind of the router being capped (``learned`` needs real prompt features)."""
        return self.inner.kind

    def masked_weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_features(features)
        return cap_weights(self.inner.masked_weights(features, mask), mask, self.max_weight)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "agents": list(self.agents), "max_weight": self.max_weight,
                "inner": self.inner.config()}

    def state_fingerprint(self) -> dict[str, Any]:
        return {"inner": self.inner.state_fingerprint()}


def cap_weights(weights: torch.Tensor, mask: torch.Tensor, max_weight: float) -> torch.Tensor:
    """``[B, A]`` float64 weights (rows summing to 1 over ``mask``), none above ``max_weight`` where feasible."""
    w = weights.detach().to(torch.float64) * mask  # float64 throughout: the cap must hold to the last bit
    present = mask.to(torch.float64)
    feasible = present.sum(dim=1, keepdim=True) * max_weight >= 1 - _SLACK
    capped = torch.zeros_like(w, dtype=torch.bool)
    for _ in range(w.shape[1]):
        over = (w > max_weight + _SLACK) & ~capped
        if not bool(over.any()):
            break
        capped |= over
        w = torch.where(capped, torch.full_like(w, max_weight), w)
        free = mask & ~capped
        free_f = free.to(torch.float64)
        left = (1 - max_weight * capped.to(torch.float64).sum(dim=1, keepdim=True)).clamp_min(0)
        base = w * free_f
        mass = base.sum(dim=1, keepdim=True)
        share = torch.where(mass > 0, base / mass.clamp_min(torch.finfo(torch.float64).tiny),
                            free_f / free_f.sum(dim=1, keepdim=True).clamp_min(1))
        w = torch.where(free, left * share, w)
    equal = present / present.sum(dim=1, keepdim=True).clamp_min(1)
    out = torch.where(feasible, w, equal)
    return out / out.sum(dim=1, keepdim=True)


def cap_router(router: RouterBase, max_weight: float | None) -> RouterBase:
    """``router`` capped at ``max_weight``, or unchanged when the policy sets no cap (None)."""
    return router if max_weight is None else CappedRouter(router, max_weight)


__all__ = ["CappedRouter", "cap_router", "cap_weights"]
