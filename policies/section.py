"""What every policy section shares: strict, frozen, typo-proof models, and cross-key rule errors.

Kept apart from :mod:`policies.schema` so that a section defined in its own module
(:mod:`policies.fusion`) is built exactly like the others without importing the schema back.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


def rule(key: str, reason: str) -> PydanticCustomError:
    """A broken cross-field rule, reported against ``key`` (dotted, from the policy's top level)."""
    return PydanticCustomError("policy_rule", "{reason}", {"key": key, "reason": reason})


class Section(BaseModel):
    """A policy table: unknown keys are errors, values strictly typed and finite, the model frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
