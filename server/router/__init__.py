"""The Mixture-of-Rewards router: fuses the client agents' reward scores into one reward.

Routers implement one small interface (:class:`Router`): weights over the agents that answered,
conditioned on the prompt only, and the fused reward. Kinds: ``uniform`` and ``fixed``
(baselines, policy-set shares) and ``learned`` (an MLP over the frozen prompt embeddings,
fitted on public labelled pairs by the Bradley–Terry likelihood of the fused reward).
Privacy modes and robustness checks wrap a router rather than branching inside it: the
policy's per-member weight cap is :class:`CappedRouter` around whichever router is in use, and
:class:`ShrunkRouter` pulls any router toward uniform where it saw few similar prompts. How the
weighted member scores are combined (plain sum, group-normalised, mean - lam*std) is a
:class:`MixingRule`; :func:`refine_online` refines a fitted router on the policy's own samples.
"""

from server.errors import RouterConfigError, RouterError, RouterInputError, RouterStateError
from server.router.base import Router, RouterBase
from server.router.capped import CappedRouter, cap_router
from server.router.features import PROMPT_FEATURE_DIM, prompt_features
from server.router.fixed import FixedRouter, UniformRouter
from server.router.learned import LearnedRouter
from server.router.membership import admit_members
from server.router.mixing import PLAIN_MIXING, MixingRule, conservative_mix, feature_groups, normalise_within_groups
from server.router.online import OnlineConfig, refine_online
from server.router.registry import ROUTERS, make_router
from server.router.shrunk import ShrunkRouter
from server.router.training import RouterFitConfig, RouterFitReport, RouterTrainingSet, fit_router

__all__ = [
    "PLAIN_MIXING",
    "PROMPT_FEATURE_DIM",
    "ROUTERS",
    "CappedRouter",
    "FixedRouter",
    "LearnedRouter",
    "MixingRule",
    "OnlineConfig",
    "Router",
    "RouterBase",
    "RouterConfigError",
    "RouterError",
    "RouterFitConfig",
    "RouterFitReport",
    "RouterInputError",
    "RouterStateError",
    "RouterTrainingSet",
    "ShrunkRouter",
    "UniformRouter",
    "admit_members",
    "cap_router",
    "conservative_mix",
    "feature_groups",
    "fit_router",
    "make_router",
    "normalise_within_groups",
    "prompt_features",
    "refine_online",
]
