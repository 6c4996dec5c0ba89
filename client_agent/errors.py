"""Exceptions raised by :mod:`client_agent`.

One tree, so the agent loop (and the ``mor client`` command) can catch exactly what it means::

    ClientAgentError
     ├── RewardModelError          a reward model cannot be built, fed or scored as asked
     │    └── CheckpointError      a saved reward-model directory is missing, unreadable, of an
     │                             unknown architecture, or its weights do not match its digest
     ├── PrivacyReportError        a privacy-report document is malformed (names the field);
     │                             a bad *signature* is crypto.errors.IntegrityError instead
     └── PrivacyError              differentially private training refused or unsound
          ├── BudgetExceeded        the requested (ε, δ) exceeds the policy's maximum
          ├── InvalidPrivacyParametersError  δ ≥ 1/N, non-positive ε, batch size > N, empty data...
          ├── SecureModeUnavailableError secure_mode needs torchcsprng and it is not installed
          └── TrainingIntegrityError a trainable parameter did not move or became non-finite
                                    during DP training (Opacus + PEFT issue #820 class), or
                                    the recomputed ε disagrees with the reported one

Messages name the file, key or parameter at fault and the reason; none is a bare traceback.
"""

from __future__ import annotations


class ClientAgentError(Exception):
    """Base of every error raised by :mod:`client_agent`."""


class RewardModelError(ClientAgentError):
    """A reward model cannot be built, fed or scored as asked."""


class CheckpointError(RewardModelError):
    """A saved reward model directory cannot be loaded (names the path and the reason)."""


class PrivacyReportError(ClientAgentError):
    """A privacy report document does not parse or validate (not a signature failure)."""


class PrivacyError(ClientAgentError):
    """DP training was refused, or its guarantees could not be established."""


class BudgetExceeded(PrivacyError):  # noqa: N818 - the name the agent protocol and policies use
    """The requested privacy budget is larger than the policy allows."""


class InvalidPrivacyParametersError(PrivacyError):
    """DP parameters that are unsound (δ ≥ 1/N) or inconsistent with the data."""


class SecureModeUnavailableError(PrivacyError):
    """``secure_mode`` was asked for but its cryptographically secure RNG is missing."""


class TrainingIntegrityError(PrivacyError):
    """Training produced parameters or accounting that cannot be trusted."""
