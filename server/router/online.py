"""Online adaptation: refine a fitted router on pairs built from the policy's own samples.

The offline fit (:mod:`server.router.training`) learns, on the fixed public pairs, which
member ranks *those* candidate answers well. GRPO then scores the policy's own samples,
which drift away from them; a member that ranked the public candidates well may rank the
policy's answers poorly. In the spirit of LASeR and BayesianRouter (an offline prior refined
from on-policy signals), the server sends the policy's answers to *public* prompts as a public
round, the consortium's public annotators label pairs of them, the members score them, and
the router is refined on those pairs:

    loss = BT(fused margins) + prior_coef * ||theta - theta_offline||^2 / 2 + uniform_kl * KL(w || uniform)

The squared distance to the offline parameters is a Gaussian prior centred on the offline fit
(MAP refinement), so a handful of on-policy pairs moves the router only as far as they are
evidence for. ``KL(w || uniform) = log K - H(w)``; its coefficient pulls toward equal weights.

What the server may see: per-member scores only on public rounds — in ``ckks``/``tls-only``
always, in ``fused-only`` only with ``privacy.public_rounds_per_agent`` (the key holder opens
a member's vector only for a public round whose digest the policy lists). Score rounds are
never used. The weights remain a function of the prompt only: the answers enter the
*training* pairs, never the weights' input.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from server.errors import RouterConfigError, RouterInputError
from server.router.learned import LearnedRouter
from server.router.training import RouterTrainingSet, bt_margins


@dataclass(frozen=True)
class OnlineConfig:
    """One refinement: full-batch AdamW steps with a pull toward the offline fit and toward uniform."""

    steps: int = 60
    learning_rate: float = 5e-3
    prior_coef: float = 1.0
    uniform_kl: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 100_000:
            raise RouterConfigError(f"online router: steps must be an integer in [1, 100000], got {self.steps!r}")
        for name in ("learning_rate", "prior_coef", "uniform_kl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value >= 0):
                raise RouterConfigError(f"online router: {name} must be a finite number >= 0, got {value!r}")
        if self.learning_rate <= 0:
            raise RouterConfigError(f"online router: learning_rate must be > 0, got {self.learning_rate!r}")


def _kl_to_uniform(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    k = mask.sum(dim=1).clamp_min(1).to(w.dtype)
    entropy = -(w * torch.log(w.clamp_min(1e-12))).sum(dim=1)
    return (torch.log(k) - entropy).mean()


def refine_online(router: LearnedRouter, data: RouterTrainingSet, config: OnlineConfig | None = None
                  ) -> dict[str, Any]:
    """Refine ``router`` in place on on-policy public pairs ``data``; returns before/after numbers.

    The feature normalisation of the offline fit is kept (it is part of the prior); only the
    MLP and the Bradley–Terry scale move.
    """
    config = config or OnlineConfig()
    if not isinstance(router, LearnedRouter):
        raise RouterConfigError(f"online refinement needs a learned router, got {type(router).__name__}")
    if tuple(data.agents) != tuple(router.agents):
        raise RouterInputError(f"on-policy pairs are for agents {list(data.agents)}, the router has "
                               f"{list(router.agents)} (same names, same order)")
    prior = {name: p.detach().clone() for name, p in router.named_parameters()}
    idx = torch.arange(len(data.features))
    with torch.no_grad():
        before = _accuracy(bt_margins(router, data, idx)[0])
    optimiser = torch.optim.AdamW(router.parameters(), lr=config.learning_rate, weight_decay=0.0)
    backup = copy.deepcopy(router.state_dict())
    router.train(True)
    try:
        for _ in range(config.steps):
            margin, w = bt_margins(router, data, idx)
            loss = -torch.nn.functional.logsigmoid(router.bt_scale() * margin).mean()
            loss = loss + config.uniform_kl * _kl_to_uniform(w, data.mask[idx])
            loss = loss + config.prior_coef / 2 * sum(((p - prior[n]) ** 2).sum() for n, p in router.named_parameters())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if not all(bool(torch.isfinite(p).all()) for p in router.parameters()):
            raise RouterInputError("online refinement diverged (non-finite parameters); the offline router is kept")
    except RouterInputError:
        router.load_state_dict(backup)
        raise
    finally:
        router.train(False)
    with torch.no_grad():
        margin, w = bt_margins(router, data, idx)
        moved = math.sqrt(sum(float(((p - prior[n]) ** 2).sum()) for n, p in router.named_parameters()))
    return {"pairs": len(idx), "accuracy_before": before, "accuracy_after": _accuracy(margin),
            "parameter_shift": moved, "mean_weights": w.mean(0).tolist(), "config": config.__dict__.copy()}


def _accuracy(margin: torch.Tensor) -> float:
    return float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean()) if len(margin) else float("nan")


__all__ = ["OnlineConfig", "refine_online"]
