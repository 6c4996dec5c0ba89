"""Exceptions raised by :mod:`client_agent`.

One tree, so the agent loop (and the ``mor client`` command) can catch exactly what it means::

    ClientAgentError
     ├── RewardModelError          a reward model cannot be built, fed or scored as asked
     │    └── CheckpointError      a saved reward-model directory is missing, unreadable, of an
     │                             unknown architecture, or its weights do not match its digest
     ├── PrivacyReportError        a privacy-report document is malformed (names the field);
     │                             a bad *signature* is crypto.errors.IntegrityError instead
     ├── PrivacyError              differentially private training refused or unsound
     │    ├── BudgetExceeded        the requested (ε, δ) exceeds the policy's maximum
     │    ├── InvalidPrivacyParametersError  δ ≥ 1/N, non-positive ε, batch size > N, empty data...
     │    ├── LifetimeBudgetExceededError a training or enrolment would pass the policy's lifetime ε
     │    └── TrainingIntegrityError a trainable parameter did not move or became non-finite
     │                              during DP training (Opacus + PEFT issue #820 class), or
     │                              the recomputed ε disagrees with the reported one
     ├── PrivacyAuditError         the empirical privacy audit cannot run as asked (settings, data, scores)
     ├── AgentConfigError          agent.toml unreadable or invalid (file, [table].key, reason)
     ├── ScoringError              a task payload cannot be scored (bad image, index, non-finite score)
     ├── LedgerError               the durable task ledger cannot be opened, read or written
     ├── LocalPolicyRefusal        a task breaks the agent's own limits (client_agent.local_policy)
     └── ChannelError              talking to the aggregation server failed
          ├── ServerUnreachableError  network errors / 5xx / 429 outlasted the retry policy
          ├── ServerRefusedError      a 4xx reply (carries the status and the server's error code)
          ├── PinMismatchError        the server's certificate is not the pinned identity/fingerprint
          └── ServerTrustError        a receipt, checkpoint, proof or server key failed verification

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


class LifetimeBudgetExceededError(PrivacyError):
    """All DP trainings of this member together would pass the policy's ``lifetime_epsilon``."""


class TrainingIntegrityError(PrivacyError):
    """Training produced parameters or accounting that cannot be trusted."""


class PrivacyAuditError(ClientAgentError):
    """``mor privacy audit`` cannot run as asked: bad settings, too little data, a non-finite score."""


class AgentConfigError(ClientAgentError):
    """``agent.toml`` cannot be read or is invalid; the message names the file, key and reason."""


class ScoringError(ClientAgentError):
    """A server-sent payload cannot be scored (undecodable image, bad index, non-finite score)."""


class LedgerError(ClientAgentError):
    """The agent's durable task ledger cannot be opened, read or written."""


class LocalPolicyRefusal(ClientAgentError):  # noqa: N818 - a refusal, not a malfunction
    """A task breaks the agent's own limits; ``code`` is the machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ChannelError(ClientAgentError):
    """Talking to the aggregation server failed."""


class ServerUnreachableError(ChannelError):
    """Network errors, 5xx or 429 replies outlasted the retry policy (or shutdown interrupted it)."""


class ServerRefusedError(ChannelError):
    """The server answered 4xx; never retried. Carries the HTTP status and the server's error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"server refused ({status} {code}): {message}")
        self.status, self.code, self.server_message = status, code, message


class PinMismatchError(ChannelError):
    """The server presented a consortium certificate that is not the pinned server identity."""


class ServerTrustError(ChannelError):
    """A server signature (receipt, checkpoint), inclusion proof or server key failed verification."""
