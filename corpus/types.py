"""The two value types every other package exchanges: a prompt and a preference pair.

They are plain frozen dataclasses so that server, client agents and evaluation share one
vocabulary without sharing code. ``facts`` carries the structured truth (e.g. the exact
price behind a chart) that the hidden preference rules in :mod:`corpus.styles` score
against; it must stay JSON-able because pairs are stored as JSON lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from corpus.errors import SpecError

# The built-in synthetic corpus' domains and image side. A Prompt itself accepts any non-empty
# domain name and any image size: a consortium's own data (``mor data import``) has its own.
DOMAINS: tuple[str, ...] = ("medical", "finance", "general")
IMAGE_SIZE: int = 64


@dataclass(frozen=True)
class Prompt:
    """One (image, question) the policy must answer.

    Validated on construction so a malformed prompt fails where it is made, not deep inside
    a training loop: the image must be an RGB PIL image (any size: each model's own processor
    resizes it at use), the domain a non-empty string (free: "radiology" is as good as
    "medical") and ``facts`` JSON-serialisable. Hash is by ``prompt_id`` (ids are unique by
    construction).
    """

    prompt_id: str
    image: Image.Image
    question: str
    domain: str
    gold: str | None
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompt_id:
            raise SpecError("Prompt.prompt_id must be a non-empty string")
        if not isinstance(self.domain, str) or not self.domain.strip():
            raise SpecError(f"Prompt {self.prompt_id}: domain must be a non-empty string, got {self.domain!r}")
        if not isinstance(self.image, Image.Image):
            raise SpecError(f"Prompt {self.prompt_id}: image must be a PIL image")
        if self.image.mode != "RGB" or min(self.image.size) < 1:
            raise SpecError(
                f"Prompt {self.prompt_id}: image must be a non-empty RGB image, "
                f"got {self.image.mode} {self.image.size[0]}x{self.image.size[1]}"
            )
        try:
            json.dumps(self.facts, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"Prompt {self.prompt_id}: facts are not JSON-able: {exc}") from None

    def __hash__(self) -> int:
        return hash(self.prompt_id)


@dataclass(frozen=True)
class PreferencePair:
    """Two answers to one prompt, ``chosen`` preferred over ``rejected`` by some annotator.

    ``meta`` records how the label came about (style, utilities, margin, whether the sampled
    label agrees with the noiseless rule) so that label noise is measurable, never hidden.
    """

    prompt: Prompt
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            json.dumps(self.meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"PreferencePair for {self.prompt.prompt_id}: meta not JSON-able: {exc}") from None

    def __hash__(self) -> int:
        return hash((self.prompt.prompt_id, self.chosen, self.rejected))
