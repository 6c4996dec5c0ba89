"""Errors of everything under ``sim/`` (harness, demo, benchmarks, evaluation); one tree.

``mor demo``, ``mor bench`` and ``mor eval`` catch :class:`SimError` and print one line on
stderr; anything else is a bug and keeps its traceback.

::

    SimError                      anything a sim run reports as a failure
     ├── ProvisionError           the chosen policy, model path or output folder is unusable
     ├── ProcessFailedError       a party's process exited early or non-zero (message: its log tail)
     ├── ProcessTimeoutError      a party did not become ready / finish in time (message: its log tail)
     ├── NetworkSetupError        an ``ip`` command building or changing the namespace test network failed
     ├── ReconcileError           an audit log could not be read at all (not: a failed check —
     │                            failed checks are results, recorded in ``results.json``)
     ├── BenchMeasurementError    a benchmark could not measure what it would report (a round was
     │                            skipped or failed): the section fails, it never prints a figure
     └── EvalError                the evaluation experiment refuses or cannot finish
          ├── EvalConfigError     a setting is out of range (names the setting and the reason)
          └── EvalRunError        a stage failed (names the stage, seed and method)

Errors from the packages a run drives (corpus, client_agent, server) are wrapped at the stage
boundary (``EvalRunError``, ``ProcessFailedError``) so the command prints one precise line.
"""

from __future__ import annotations


class SimError(Exception):
    """Base class of every error raised under ``sim/``."""


class BenchMeasurementError(SimError):
    """A benchmark section's rounds were skipped or failed, so it has no honest figure to report."""


class ProvisionError(SimError):
    """The inputs of a demo run (policy file, model checkpoint, output folder) are unusable."""


class ProcessFailedError(SimError):
    """A party's process exited during start-up or with a non-zero status."""


class ProcessTimeoutError(SimError):
    """A party's process did not become ready, or did not finish, within its time limit."""


class NetworkSetupError(SimError):
    """An ``ip`` command failed while building or changing the namespace network (its stderr included)."""


class ReconcileError(SimError):
    """An audit log directory or key needed for reconciliation is missing or unreadable."""


class EvalError(SimError):
    """The evaluation experiment (``mor eval``) refuses a setting or cannot finish a stage."""


class EvalConfigError(EvalError, ValueError):
    """An :class:`~sim.eval.config.EvalConfig` setting is invalid."""


class EvalRunError(EvalError, RuntimeError):
    """A stage of the experiment failed."""
