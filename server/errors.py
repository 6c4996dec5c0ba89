"""Exceptions raised by :mod:`server`.

One tree, so callers catch exactly what they mean (add new leaves here, under the branch
they belong to, and redraw the tree; ``tests/test_server_error_tree.py`` fails on any
exception class under ``server/`` that is not in this drawing or not under ``ServerError``)::

    ServerError
     ├── ModelError               the policy VLM cannot be built, loaded or used
     │    ├── VLMBuildError       building the small offline VLM or its tokenizer failed
     │    ├── VLMLoadError        a local checkpoint is missing, unreadable or not a VLM
     │    └── WarmStartError      the supervised warm start was given unusable data/settings
     ├── TrainingError            policy training (GRPO) refused or failed
     │    ├── GRPOConfigError     a GRPO setting that must be refused (e.g. beta=0: no KL)
     │    └── RewardError         the caller's reward function returned something unusable
     ├── FusionError              envelopes/inputs of a round that cannot be fused (message says why)
     │    └── PrivacyModeError    asked for something the privacy mode forbids (e.g. per-agent
     │         │                  scores under fused-only, key material the mode may not hold)
     │         └── EnvelopeModeError  an envelope of the wrong payload kind or CKKS context for
     │                            the mode; carries the code the submissions route answers with
     ├── RouterError              anything the Mixture-of-Rewards router refuses
     │    ├── RouterConfigError   a router cannot be built as asked (unknown kind, bad fixed
     │    │                       weights, unknown keyword, invalid fit settings)
     │    ├── RouterInputError    features, scores, masks or agent names of the wrong shape,
     │    │                       value or name (the message names the argument and why)
     │    └── RouterStateError    a saved router cannot be loaded: missing or unreadable file,
     │                            wrong format, tensors that do not match, digest mismatch
     ├── ConfigError              a server / key-holder TOML config is missing, malformed or invalid
     ├── KeyHolderError           the fused-only key holder refused or could not be reached
     └── StateError               the state store refused: a schema newer than this software, a
          │                       backup that does not verify, a restore that would lose newer state
          └── TaskClosedError     a submission's task closed (its round fused) before it was stored

Two deliberate roots outside the tree:

* ``Rejection`` (:mod:`server.rejections`): errors meant for HTTP clients (status, code,
  message; the FastAPI layer turns each into an ``ErrorBody`` reply and an audit entry), so
  programmer errors never leak to the wire as client-facing messages.
* ``ShutdownRequested`` (a ``BaseException``, like ``KeyboardInterrupt``): not an error but a
  stop request travelling out of the training run, so no ``except Exception`` in TRL or
  transformers swallows it.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error raised by :mod:`server`."""


class ModelError(ServerError):
    """The policy VLM cannot be built, loaded or used."""


class VLMBuildError(ModelError):
    """Building the small offline VLM (model, tokenizer, processor) failed."""


class VLMLoadError(ModelError):
    """A local checkpoint cannot be loaded as a vision-language model."""


class WarmStartError(ModelError):
    """The supervised warm start was given unusable examples or settings."""


class TrainingError(ServerError):
    """Policy training refused to start or failed."""


class GRPOConfigError(TrainingError):
    """A GRPO setting that must be refused; the message names the field and the reason."""


class RewardError(TrainingError):
    """The reward function returned a value of the wrong shape or type."""


class FusionError(ServerError):
    """Envelopes or inputs that cannot be fused; the message names the agent/argument and why."""


class PrivacyModeError(FusionError):
    """The privacy mode forbids what was asked (e.g. per-agent scores under fused-only)."""


class EnvelopeModeError(PrivacyModeError):
    """An envelope the privacy mode does not take; ``code`` is what the HTTP reply says."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RouterError(ServerError):
    """Base of every error raised by :mod:`server.router`."""


class RouterConfigError(RouterError):
    """A router or a fit cannot be configured as asked; the message names the setting."""


class RouterInputError(RouterError):
    """Features, scores, masks or agent names are unusable; the message names which and why."""


class RouterStateError(RouterError):
    """A saved router file cannot be loaded; the message names the file and the reason."""


class ConfigError(ServerError):
    """A TOML config cannot be used; the message names the file, the key and the reason."""


class KeyHolderError(ServerError):
    """The key holder refused a request or could not be reached (message says which)."""


class StateError(ServerError):
    """The state database or a backup of it cannot be used as asked (the message says why and what to do)."""


class TaskClosedError(StateError):
    """A submission's task closed between the route's check and the storing transaction (rolls it back)."""


class ShutdownRequested(BaseException):  # noqa: N818 - a request, like KeyboardInterrupt
    """Raised inside the training run when a stop was requested; ``str(exc)`` is the reason.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` in TRL or
    transformers swallows it on its way out.
    """
