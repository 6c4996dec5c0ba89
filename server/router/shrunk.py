"""Regularisation toward uniform where the router has little evidence: shrinkage by evidence count.

A learned router fitted on a few hundred public pairs is confident everywhere, also on prompts
unlike any it was fitted on (a new domain, an unusual image), where its near one-hot weights
are a guess that lets GRPO exploit whichever member it happens to favour. This wrapper blends
the inner router's weights with the uniform mixture, per prompt, by how much evidence lies
near that prompt:

    n(x)   = sum_i exp((cos(x, a_i) - 1) / bandwidth)     (a_i: the prompts the router was fitted on)
    lam(x) = n(x) / (n(x) + kappa)
    w(x)   = lam(x) * w_inner(x) + (1 - lam(x)) * uniform

so ``kappa`` is "how many nearby fitted prompts before the router's own weights count half",
like the prior count of a Dirichlet around uniform. Cosine similarity is taken on features
standardised with the anchors' mean/std. ``n`` is a function of the prompt features only, so
the weights stay a function of the prompt only (and remain usable in ``fused-only``). The
anchors are public prompts' embeddings; the digest covers them with ``kappa`` and ``bandwidth``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar

import torch

from server.errors import RouterConfigError
from server.router.base import RouterBase, check_features, renormalise


def _number(name: str, value: object, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and low < value <= high):
        raise RouterConfigError(f"shrunk router: {name} must be a number in ({low:g}, {high:g}], got {value!r}")
    return float(value)


class ShrunkRouter(RouterBase):
    """``inner``'s weights shrunk toward uniform where few fitted prompts are near (module docstring)."""

    kind: ClassVar[str] = "shrunk"

    def __init__(self, inner: RouterBase, anchors: torch.Tensor, *, kappa: float = 8.0,
                 bandwidth: float = 0.1) -> None:
        if not isinstance(inner, RouterBase):
            raise RouterConfigError(f"shrunk router: inner must be a router, got {type(inner).__name__}")
        check_features(anchors)
        if anchors.shape[0] < 1:
            raise RouterConfigError("shrunk router: needs at least one anchor prompt")
        self.inner, self.agents = inner, inner.agents
        self.kappa = _number("kappa", kappa, low=0.0, high=1e6)
        self.bandwidth = _number("bandwidth", bandwidth, low=0.0, high=10.0)
        a = torch.unique(anchors.detach().to(torch.float64).cpu(), dim=0)
        self._mean = a.mean(0)
        self._std = a.std(0, unbiased=False).clamp_min(1e-6)
        self._anchors = self._unit(a)

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.to(torch.float64).cpu() - self._mean) / self._std
        return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def evidence(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]`` kernel count of fitted prompts near each prompt (1 per identical anchor)."""
        check_features(features, self._anchors.shape[1])
        cos = self._unit(features) @ self._anchors.T
        return torch.exp((cos - 1) / self.bandwidth).sum(dim=1)

    def trust(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]`` share of the inner router's weights in the blend, ``n / (n + kappa)``."""
        n = self.evidence(features)
        return n / (n + self.kappa)

    def masked_weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inner = self.inner.masked_weights(features, mask).to(torch.float64)
        uniform = renormalise(torch.ones(mask.shape, dtype=torch.float64), mask, self.agents)
        lam = self.trust(features).unsqueeze(1)
        return lam * inner + (1 - lam) * uniform

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "agents": list(self.agents), "kappa": self.kappa, "bandwidth": self.bandwidth,
                "inner": self.inner.config()}

    def state_fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256(self._anchors.numpy().tobytes()).hexdigest()
        return {"inner": self.inner.state_fingerprint(), "anchors_sha256": digest,
                "anchors": int(self._anchors.shape[0])}


__all__ = ["ShrunkRouter"]
