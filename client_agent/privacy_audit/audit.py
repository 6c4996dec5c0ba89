"""``mor privacy audit``: does the member's DP training leak less than its claim allows?

The experiment (one run, where the data is; nothing is sent anywhere):

1. ``canaries`` synthetic preference pairs are made (:mod:`.canaries`); a random half — drawn
   from the OS CSPRNG — joins the member's private pairs for the **target** model.
2. The target is trained the member's way under DP (:func:`.models.train_dp`), and ``shadows``
   shadow models the same way, each with its own half of the canaries (every canary in exactly
   half of them), as a strong attacker who knows the training recipe and the data would.
3. Every model scores every canary's chosen and rejected answer — the only thing a server ever
   sees — and the two attacks (:mod:`.attacks`) guess the target's canaries from the margins.
4. The same again without DP (same architecture, optimiser, epochs; :func:`.models.train_plain`)
   as the contrast: what the member's recipe leaks when nothing protects it.

The claim holds when no attack's empirical ε lower bound (:mod:`.stats`, ``confidence``-level
Clopper–Pearson) exceeds the ε of the DP training. Why this is not free: each model is a full
training, so the audit costs ``2 × (1 + shadows)`` trainings; the canaries bound how large an ε it
could ever show (``epsilon_ceiling``), which the report prints beside every figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client_agent.config import AgentConfig
from client_agent.errors import PrivacyAuditError
from client_agent.privacy_audit.attacks import AttackResult, run_attacks
from client_agent.privacy_audit.canaries import (
    balanced_assignment,
    fresh_seed,
    make_canaries,
    random_half,
    with_canaries,
)
from client_agent.privacy_audit.models import Trained, canary_margins, train_dp, train_plain

KINDS = ("dp", "non-private")


@dataclass(frozen=True)
class AuditSettings:
    """How large an audit to run. The defaults fit a head-only model on 2 CPU cores in minutes."""

    canaries: int = 256
    shadows: int = 4
    confidence: float = 0.95
    contrast: bool = True
    contrast_epochs: int | None = None  # None: the config's [training].epochs, like the DP model
    canary_seed: int | None = None      # None: fresh from the OS CSPRNG (recorded in the results)
    membership_seed: int | None = None  # None: fresh from the OS CSPRNG (recorded in the results)
    progress: bool = True

    def check(self) -> None:
        if self.canaries < 8 or self.canaries % 2:
            raise PrivacyAuditError(f"--canaries must be an even number >= 8, got {self.canaries}")
        if self.shadows < 4 or self.shadows % 2:
            raise PrivacyAuditError(f"--shadows must be an even number >= 4 (the likelihood-ratio attack needs "
                                    f"2 models with and 2 without each canary), got {self.shadows}")
        if not 0.5 <= self.confidence < 1.0:
            raise PrivacyAuditError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if self.contrast_epochs is not None and self.contrast_epochs < 1:
            raise PrivacyAuditError(f"--contrast-epochs must be >= 1, got {self.contrast_epochs}")


@dataclass
class ModelAudit:
    """Both attacks on one kind of model (``dp`` or ``non-private``), and how its models trained."""

    kind: str
    margins: np.ndarray              # [1 + shadows, canaries]: row 0 is the target
    trainings: list[dict[str, Any]]
    attacks: dict[str, AttackResult] = field(default_factory=dict)

    def best_epsilon_lower(self) -> float:
        return max(result.best_epsilon_lower() for result in self.attacks.values())


@dataclass
class AuditOutcome:
    """Everything the report, the JSON file and the audit-log entry are made from."""

    settings: AuditSettings
    canary_seed: int
    membership_seed: int
    membership: np.ndarray           # [1 + shadows, canaries] booleans
    data_pairs: int
    claimed_epsilon: float
    spent_epsilon: float
    delta: float
    models: dict[str, ModelAudit]

    @property
    def claim_holds(self) -> bool:
        """No attack on the DP model shows more than the ε it spent (and the ε it claims)."""
        return self.models["dp"].best_epsilon_lower() <= min(self.spent_epsilon, self.claimed_epsilon) + 1e-9

    @property
    def contrast_leaks_more(self) -> bool | None:
        """Measurably more: for some attack, the non-private TPR interval at 1% FPR lies above the DP one."""
        if "non-private" not in self.models:
            return None
        dp, plain = self.models["dp"].attacks, self.models["non-private"].attacks
        return any(plain[name].points[0].tpr_interval[0] > dp[name].points[0].tpr_interval[1] for name in dp)


def _load_pairs(config: AgentConfig) -> list[Any]:
    from corpus.dataset import load_pair_dataset

    pairs = list(load_pair_dataset(config.agent.data_dir).pairs)
    if len(pairs) < 2:
        raise PrivacyAuditError(f"{config.agent.data_dir}: {len(pairs)} preference pair(s); an audit needs data to "
                                "train on")
    return pairs


def run_audit(config: AgentConfig, settings: AuditSettings, *, say: Callable[[str], None] = print) -> AuditOutcome:
    """Train, score and attack every model; see the module docstring for the experiment."""
    settings.check()
    data = _load_pairs(config)
    canary_seed = settings.canary_seed if settings.canary_seed is not None else fresh_seed()
    membership_seed = settings.membership_seed if settings.membership_seed is not None else fresh_seed()
    canaries = make_canaries(settings.canaries, canary_seed, image_size=data[0].prompt.image.size)
    rng = np.random.default_rng(membership_seed)
    membership = np.vstack([random_half(settings.canaries, rng)[None, :],
                            balanced_assignment(settings.canaries, settings.shadows, rng)])
    epochs = settings.contrast_epochs or config.training.epochs
    trainers: dict[str, Callable[[list[Any], int], Trained]] = {
        "dp": lambda pairs, index: train_dp(config, pairs, index=index, progress=settings.progress)}
    if settings.contrast:
        trainers["non-private"] = lambda pairs, index: train_plain(config, pairs, epochs=epochs,
                                                                    progress=settings.progress)
    total, done = len(trainers) * membership.shape[0], 0
    say(f"privacy audit of {config.model.arch}: {len(data)} private pairs, {settings.canaries} canaries "
        f"({settings.canaries // 2} in each model), {settings.shadows} shadow models; {total} trainings")
    models: dict[str, ModelAudit] = {}
    for kind, train in trainers.items():
        margins = np.zeros(membership.shape, dtype=float)
        trainings = []
        for index, members in enumerate(membership):
            done += 1
            role = "target" if index == 0 else f"shadow {index}/{settings.shadows}"
            say(f"[{done}/{total}] {kind} {role}")
            trained = train(with_canaries(data, canaries, members), index)
            margins[index] = canary_margins(trained.model, canaries, batch_size=config.limits.score_batch_size)
            trainings.append(trained.info)
        audit = ModelAudit(kind, margins, trainings)
        audit.attacks = run_attacks(margins, membership, delta=config.privacy.delta, confidence=settings.confidence)
        models[kind] = audit
    spent = float(models["dp"].trainings[0]["epsilon"])
    if not math.isfinite(spent):
        raise PrivacyAuditError(f"the DP training reported epsilon={spent}")
    return AuditOutcome(settings=settings, canary_seed=canary_seed, membership_seed=membership_seed,
                        membership=membership, data_pairs=len(data), claimed_epsilon=config.privacy.epsilon,
                        spent_epsilon=spent, delta=config.privacy.delta, models=models)
