"""Differentially private reward-model training (Opacus DP-SGD) behind one entry point."""

from client_agent.dp.accounting import check_epsilon, recompute_epsilon
from client_agent.dp.budget import PrivacyBudget, check_budget
from client_agent.dp.guards import ParameterGuard
from client_agent.dp.train import InsecurePilotWarning, PrivateTrainingResult, train_private

__all__ = [
    "InsecurePilotWarning",
    "ParameterGuard",
    "PrivacyBudget",
    "PrivateTrainingResult",
    "check_budget",
    "check_epsilon",
    "recompute_epsilon",
    "train_private",
]
