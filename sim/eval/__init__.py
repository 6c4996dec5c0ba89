"""``mor eval``: does Mixture-of-Rewards help? Same prompts, seeds and GRPO budget for every method.

Methods: the reference; GRPO with each single client's reward model; the uniform mixture; a
FedAvg reward model (one shared architecture, the "parameters" approach); the learned MoR
router; a centralised non-private reward model (the ceiling). See :mod:`sim.eval.experiment`.
"""

from sim.errors import EvalConfigError, EvalError, EvalRunError
from sim.eval.config import ClientSpec, EvalConfig
from sim.eval.experiment import METHODS, EvalResult, SeedResult, run_eval
from sim.eval.report import write_report

__all__ = [
    "METHODS",
    "ClientSpec",
    "EvalConfig",
    "EvalConfigError",
    "EvalError",
    "EvalResult",
    "EvalRunError",
    "SeedResult",
    "run_eval",
    "write_report",
]
