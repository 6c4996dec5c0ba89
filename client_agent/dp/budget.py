"""The privacy budget as a self-validating value, and the checks made before training starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from client_agent.errors import BudgetExceeded, InvalidPrivacyParametersError


@dataclass(frozen=True)
class PrivacyBudget:
    """(ε, δ) for the whole training run. Validated on construction."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, int | float) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise InvalidPrivacyParametersError(f"PrivacyBudget.epsilon must be finite and > 0, got {self.epsilon!r}")
        if not (isinstance(self.delta, int | float) and 0 < self.delta < 1):
            raise InvalidPrivacyParametersError(f"PrivacyBudget.delta must be in (0, 1), got {self.delta!r}")


def check_budget(budget: PrivacyBudget, max_budget: PrivacyBudget, dataset_size: int) -> None:
    """Refuse a run whose budget the policy does not allow, or whose δ is meaningless for N.

    δ ≥ 1/N would allow a mechanism that publishes one random record in the clear, so it is
    refused outright rather than warned about.
    """
    if budget.epsilon > max_budget.epsilon or budget.delta > max_budget.delta:
        raise BudgetExceeded(
            f"requested (epsilon={budget.epsilon}, delta={budget.delta:g}) exceeds the policy maximum "
            f"(epsilon={max_budget.epsilon}, delta={max_budget.delta:g})"
        )
    if dataset_size <= 0:
        raise InvalidPrivacyParametersError("train_pairs is empty: nothing to train on")
    if budget.delta >= 1.0 / dataset_size:
        raise InvalidPrivacyParametersError(
            f"delta={budget.delta:g} must be < 1/N = {1.0 / dataset_size:g} for N={dataset_size} training pairs"
        )
