"""``mor eval``: does Mixture-of-Rewards help? Same prompts, seeds and GRPO budget for every method.

Methods: the reference; GRPO with each single client's reward model; the uniform mixture; a
FedAvg reward model (one shared architecture, the "parameters" approach); the learned MoR
router; a centralised non-private reward model (the ceiling). See :mod:`sim.eval.experiment`.
:mod:`sim.eval.robustness` (``mor eval --robustness``) measures how far one malicious member
moves the fused reward, without any model training.

The experiment's names are imported on first use (module ``__getattr__``), so the robustness
script and the light submodules do not pay for importing TRL and transformers (~15 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sim.errors import EvalConfigError, EvalError, EvalRunError

if TYPE_CHECKING:
    from sim.eval.config import ClientSpec, EvalConfig
    from sim.eval.experiment import METHODS, EvalResult, SeedResult, run_eval
    from sim.eval.report import write_report

_LAZY = {"ClientSpec": "config", "EvalConfig": "config", "METHODS": "experiment", "EvalResult": "experiment",
         "SeedResult": "experiment", "run_eval": "experiment", "write_report": "report"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


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
