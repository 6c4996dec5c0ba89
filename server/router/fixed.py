"""Input-independent routers: the uniform average (the baseline) and fixed, policy-set weights.

They serve as baselines the learned router must beat, and as the conservative choice when a
consortium agrees on fixed shares (e.g. "each member counts equally") instead of letting a
learned model decide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from server.errors import RouterConfigError
from server.router.base import RouterBase, check_features, renormalise, validate_agents


class UniformRouter(RouterBase):
    """Equal weight on every agent that answered."""

    kind: ClassVar[str] = "uniform"

    def __init__(self, agents: Sequence[str]) -> None:
        self.agents = validate_agents(agents)

    def masked_weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_features(features)
        return renormalise(torch.ones(mask.shape, dtype=torch.float32), mask, self.agents)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "agents": list(self.agents)}


class FixedRouter(RouterBase):
    """Constant weights per agent, renormalised over the agents that answered.

    ``weights`` must name every agent exactly once with a finite, non-negative value, and sum
    to more than 0; they need not sum to 1 (they are normalised). ``agents`` fixes the column
    order and defaults to the order of ``weights``.
    """

    kind: ClassVar[str] = "fixed"

    def __init__(self, weights: Mapping[str, float], agents: Sequence[str] | None = None) -> None:
        if not isinstance(weights, Mapping) or not weights:
            raise RouterConfigError("fixed router: weights must be a non-empty mapping agent -> weight")
        self.agents = validate_agents(list(weights) if agents is None else agents)
        missing = sorted(set(self.agents) - set(weights))
        extra = sorted(set(weights) - set(self.agents))
        if missing or extra:
            raise RouterConfigError(f"fixed router: weights must name exactly the agents {list(self.agents)}; "
                                    f"missing {missing}, unknown {extra}")
        values = []
        for agent in self.agents:
            w = weights[agent]
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise RouterConfigError(f"fixed router: weight of {agent!r} must be a finite number >= 0, got {w!r}")
            values.append(float(w))
        total = sum(values)
        if total <= 0:
            raise RouterConfigError("fixed router: weights sum to 0; at least one agent needs a positive weight")
        self._shares = torch.tensor([v / total for v in values], dtype=torch.float32)

    @property
    def shares(self) -> dict[str, float]:
        """The normalised weights with every agent present."""
        return {a: float(s) for a, s in zip(self.agents, self._shares.tolist(), strict=True)}

    def masked_weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_features(features)
        return renormalise(self._shares.expand(mask.shape), mask, self.agents)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "agents": list(self.agents), "weights": self.shares}
