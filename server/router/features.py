"""The router's input: one embedding per (image, question) prompt from the shared frozen encoders.

Layout ``[image (1280) | question text (384)]``: EfficientNet-lite0 pooled image features
followed by L2-normalised MiniLM question features. Only the prompt is embedded, never an
answer or a score: the router's weights must be a function of the input alone (see
:mod:`server.router.base` for why).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from PIL import Image

from corpus.types import Prompt

IMAGE_FEATURE_DIM = 1280
TEXT_FEATURE_DIM = 384
PROMPT_FEATURE_DIM = IMAGE_FEATURE_DIM + TEXT_FEATURE_DIM


class PromptEncoders(Protocol):
    """The part of :class:`embed.FrozenEncoders` the router uses."""

    text_dim: int
    image_dim: int

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor: ...


def prompt_features(prompts: Sequence[Prompt], encoders: PromptEncoders | None = None) -> torch.Tensor:
    """``[B, image_dim + text_dim]`` float32 router features (``encoders`` defaults to the shared ones)."""
    if encoders is None:
        from embed import shared_encoders

        encoders = shared_encoders()
    if not prompts:
        return torch.empty(0, encoders.image_dim + encoders.text_dim)
    images = encoders.encode_images([p.image for p in prompts])
    texts = encoders.encode_texts([p.question for p in prompts])
    return torch.cat([images.float().cpu(), texts.float().cpu()], dim=1)
