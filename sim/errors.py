"""Errors of the demo harness (``mor demo``); the CLI turns each into one line on stderr.

::

    SimError                      anything the demo reports as a failure of the run
     ├── ProvisionError           the chosen policy, model path or output folder is unusable
     ├── ProcessFailedError       a party's process exited early or non-zero (message: its log tail)
     ├── ProcessTimeoutError      a party did not become ready / finish in time (message: its log tail)
     └── ReconcileError           an audit log could not be read at all (not: a failed check —
                                  failed checks are results, recorded in ``results.json``)
"""

from __future__ import annotations


class SimError(Exception):
    """Base class of the demo harness's errors."""


class ProvisionError(SimError):
    """The inputs of a demo run (policy file, model checkpoint, output folder) are unusable."""


class ProcessFailedError(SimError):
    """A party's process exited during start-up or with a non-zero status."""


class ProcessTimeoutError(SimError):
    """A party's process did not become ready, or did not finish, within its time limit."""


class ReconcileError(SimError):
    """An audit log directory or key needed for reconciliation is missing or unreadable."""
