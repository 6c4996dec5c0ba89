"""Exceptions raised by :mod:`server`.

One tree, so callers catch exactly what they mean (add new leaves here, under the branch
they belong to, and redraw the tree)::

    ServerError
     ├── ModelError               the policy VLM cannot be built, loaded or used
     │    ├── VLMBuildError       building the small offline VLM or its tokenizer failed
     │    ├── VLMLoadError        a local checkpoint is missing, unreadable or not a VLM
     │    └── WarmStartError      the supervised warm start was given unusable data/settings
     ├── TrainingError            policy training (GRPO) refused or failed
     │    ├── GRPOConfigError     a GRPO setting that must be refused (e.g. beta=0: no KL)
     │    └── RewardError         the caller's reward function returned something unusable
     ├── ConfigError              a server / key-holder TOML config is missing, malformed or invalid
     └── KeyHolderError           the fused-only key holder refused or could not be reached

Errors meant for HTTP clients are not here: they are :class:`server.rejections.Rejection`
(status, code, message; the FastAPI layer turns each into an ``ErrorBody`` reply and an audit
entry), so programmer errors never leak to the wire as client-facing messages.
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


class ConfigError(ServerError):
    """A TOML config cannot be used; the message names the file, the key and the reason."""


class KeyHolderError(ServerError):
    """The key holder refused a request or could not be reached (message says which)."""
