"""The rows of the table: which reward each GRPO run optimises, built lazily per seed.

Rows (issue #5 §2, extended by issue #17):

* ``reference`` — no GRPO; ``single:<member>`` — one member's DP reward model alone;
* ``uniform`` / ``uniform-gn`` — equal weights (FedGRPO-style), plain or group-normalised;
* ``fedavg`` — FedAvg of one shared architecture; ``central`` — pooled, non-private (the ceiling);
* ``oracle`` — each prompt's domain owner gets weight 1 (the reference row for routing: what a
  router that knew every prompt's domain would give);
* ``mor`` — the learned router as shipped (Bradley–Terry fit, entropy 1e-3);
* ``mor-gn`` — same weights, members normalised within each GRPO group before mixing;
* ``mor-cons`` — same weights, mean − λ·std across members (conservative);
* ``mor-shrunk`` — fitted with a KL-to-uniform term and shrunk toward uniform by evidence count;
* ``mor-online`` — ``mor-shrunk``'s router refined on the reference policy's own sampled answers
  to public prompts (on-policy public pairs), then shrunk;
* ``mor-heldout`` / ``mor-shrunk-heldout`` — ``mor`` / ``mor-shrunk`` fitted without the public
  pairs of ``config.heldout_domain``: the generalisation check.

Everything a row needs is built on first use (:class:`SeedContext`), so a resumed run trains only
what its unfinished rows need (the members always: every mixture uses them).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch

from corpus.styles import STYLES
from server.router import (
    LearnedRouter,
    MixingRule,
    OnlineConfig,
    RouterBase,
    RouterFitConfig,
    RouterTrainingSet,
    ShrunkRouter,
    UniformRouter,
    refine_online,
)
from sim.eval.config import EvalConfig
from sim.eval.data import EvalData
from sim.eval.scoring import CalibratedModel, Mixture, OracleMixture, PromptFeatures, Scorer

MIXTURES = ("uniform", "uniform-gn", "fedavg", "oracle", "mor", "mor-gn", "mor-cons", "mor-shrunk", "mor-online",
            "mor-heldout", "mor-shrunk-heldout", "central")


def methods_for(config: EvalConfig) -> tuple[str, ...]:
    """Table rows in order (all of them, or ``config.methods`` in this order)."""
    every = ("reference", *(f"single:{c.name}" for c in config.clients), *MIXTURES)
    return every if config.methods is None else tuple(m for m in every if m in config.methods)


def router_set(members: list[CalibratedModel], pairs: list[Any], features: PromptFeatures) -> RouterTrainingSet:
    """Public labelled pairs as the router sees them: prompt features and every member's calibrated scores."""
    prompts = [p.prompt for p in pairs]
    chosen = torch.stack([m.score(prompts, [p.chosen for p in pairs]) for m in members], dim=1)
    rejected = torch.stack([m.score(prompts, [p.rejected for p in pairs]) for m in members], dim=1)
    return RouterTrainingSet(agents=tuple(m.name for m in members), features=features(prompts),
                             chosen=chosen.float(), rejected=rejected.float(), mask=torch.ones_like(chosen).bool(),
                             domains=tuple(p.domain for p in prompts), groups=tuple(p.prompt_id for p in prompts))


class SeedContext:
    """One seed's members and, on first use, each router and baseline model (see the module docstring)."""

    def __init__(self, config: EvalConfig, data: EvalData, seed: int, members: list[CalibratedModel],
                 features: PromptFeatures, *, baselines: Callable[[str], Scorer],
                 on_policy_pairs: Callable[[], list[Any]], progress: bool) -> None:
        self.config, self.data, self.seed, self.members, self.features = config, data, seed, members, features
        self._baselines, self._on_policy_pairs, self.progress = baselines, on_policy_pairs, progress
        self.info: dict[str, Any] = {}  # router fits, online refinement: JSON-able, kept in the seed's record

    @property
    def agents(self) -> list[str]:
        return [m.name for m in self.members]

    def _fit(self, pairs: list[Any], *, entropy_coef: float, tag: str) -> LearnedRouter:
        router = LearnedRouter(self.agents, seed=self.seed)
        report = router.fit(router_set(self.members, pairs, self.features),
                            RouterFitConfig(max_epochs=self.config.router_epochs, seed=self.seed,
                                            entropy_coef=entropy_coef, show_progress=self.progress))
        self.info[f"fit:{tag}"] = report.to_dict()
        return router

    def _pairs(self, heldout: bool) -> list[Any]:
        if not heldout:
            return self.data.public_pairs
        return [p for p in self.data.public_pairs if p.prompt.domain != self.config.heldout_domain]

    def _shrunk(self, inner: RouterBase, heldout: bool) -> ShrunkRouter:
        anchors = self.features([p.prompt for p in self._pairs(heldout)])
        return ShrunkRouter(inner, anchors, kappa=self.config.shrink_kappa, bandwidth=self.config.shrink_bandwidth)

    @cached_property
    def learned(self) -> LearnedRouter:
        return self._fit(self._pairs(False), entropy_coef=RouterFitConfig().entropy_coef, tag="mor")

    @cached_property
    def learned_heldout(self) -> LearnedRouter:
        return self._fit(self._pairs(True), entropy_coef=RouterFitConfig().entropy_coef, tag="mor-heldout")

    @cached_property
    def regularised(self) -> LearnedRouter:
        return self._fit(self._pairs(False), entropy_coef=self.config.uniform_kl, tag="mor-shrunk")

    @cached_property
    def regularised_heldout(self) -> LearnedRouter:
        return self._fit(self._pairs(True), entropy_coef=self.config.uniform_kl, tag="mor-shrunk-heldout")

    @cached_property
    def online(self) -> LearnedRouter:
        router = copy.deepcopy(self.regularised)
        pairs = self._on_policy_pairs()
        self.info["online"] = refine_online(router, router_set(self.members, pairs, self.features),
                                            OnlineConfig(prior_coef=self.config.online_prior_coef,
                                                         uniform_kl=self.config.uniform_kl))
        return router

    def owners(self) -> dict[str, str]:
        """domain -> the member whose rule owns it (the oracle's choice)."""
        out: dict[str, str] = {}
        for spec in self.config.clients:
            for domain in STYLES[spec.style].domains:
                out.setdefault(domain, spec.name)
        return out

    def scorer(self, method: str) -> Scorer:
        """The reward ``method``'s GRPO run optimises."""
        members, features = self.members, self.features
        if method.startswith("single:"):
            return next(m for m in members if m.name == method.split(":", 1)[1])
        if method in ("fedavg", "central"):
            return self._baselines(method)
        if method == "oracle":
            return OracleMixture("oracle", members, self.owners())
        gn, cons = MixingRule(group_normalise=True), MixingRule(disagreement_penalty=self.config.disagreement_penalty)
        routers: dict[str, tuple[Callable[[], RouterBase], MixingRule]] = {
            "uniform": (lambda: UniformRouter(self.agents), MixingRule()),
            "uniform-gn": (lambda: UniformRouter(self.agents), gn),
            "mor": (lambda: self.learned, MixingRule()),
            "mor-gn": (lambda: self.learned, gn),
            "mor-cons": (lambda: self.learned, cons),
            "mor-shrunk": (lambda: self._shrunk(self.regularised, False), MixingRule()),
            "mor-online": (lambda: self._shrunk(self.online, False), MixingRule()),
            "mor-heldout": (lambda: self.learned_heldout, MixingRule()),
            "mor-shrunk-heldout": (lambda: self._shrunk(self.regularised_heldout, True), MixingRule()),
        }
        if method not in routers:
            raise KeyError(method)
        build, mixing = routers[method]
        return Mixture(method, members, build(), features, mixing=mixing)


__all__ = ["MIXTURES", "SeedContext", "methods_for", "router_set"]
