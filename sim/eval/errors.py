"""Errors of the evaluation harness.

::

    EvalError                  anything the harness refuses or cannot finish
    ├── EvalConfigError        a setting is out of range (names the setting and the reason)
    └── EvalRunError           a stage failed (names the stage, seed and method)

Errors from the packages the harness drives (corpus, client_agent, server) are wrapped into
:class:`EvalRunError` at the stage boundary so ``mor eval`` prints one precise line.
"""

from __future__ import annotations


class EvalError(Exception):
    """Base of the evaluation harness' errors."""


class EvalConfigError(EvalError, ValueError):
    """An :class:`~sim.eval.config.EvalConfig` setting is invalid."""


class EvalRunError(EvalError, RuntimeError):
    """A stage of the experiment failed."""
