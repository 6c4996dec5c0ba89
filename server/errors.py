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
     │                            scores under fused-only)
     ├── RouterError              anything the Mixture-of-Rewards router refuses; the router
     │    │                       subpackage keeps these in :mod:`server.router.errors`
     │    ├── RouterConfigError   a router or a fit cannot be configured as asked
     │    ├── RouterInputError    features, scores, masks or agent names of the wrong shape/value
     │    └── RouterStateError    a saved router file cannot be loaded (missing, format, digest)
     ├── ConfigError              a server / key-holder TOML config is missing, malformed or invalid
     └── KeyHolderError           the fused-only key holder refused or could not be reached

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


class ConfigError(ServerError):
    """A TOML config cannot be used; the message names the file, the key and the reason."""


class KeyHolderError(ServerError):
    """The key holder refused a request or could not be reached (message says which)."""


class ShutdownRequested(BaseException):  # noqa: N818 - a request, like KeyboardInterrupt
    """Raised inside the training run when a stop was requested; ``str(exc)`` is the reason.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` in TRL or
    transformers swallows it on its way out.
    """
