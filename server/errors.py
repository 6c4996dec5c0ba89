"""Exceptions raised by :mod:`server`.

One tree, so callers catch exactly what they mean (add new leaves here, under the branch
they belong to, and redraw the tree)::

    ServerError
     ├── ModelError               the policy VLM cannot be built, loaded or used
     │    ├── VLMBuildError       building the small offline VLM or its tokenizer failed
     │    ├── VLMLoadError        a local checkpoint is missing, unreadable or not a VLM
     │    └── WarmStartError      the supervised warm start was given unusable data/settings
     └── TrainingError            policy training (GRPO) refused or failed
          ├── GRPOConfigError     a GRPO setting that must be refused (e.g. beta=0: no KL)
          └── RewardError         the caller's reward function returned something unusable

Errors meant for HTTP clients are not here: the FastAPI layer maps to ``HTTPException``
itself, so programmer errors never leak to the wire as client-facing messages.
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
