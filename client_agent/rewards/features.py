"""Cached frozen features: each distinct text and image is encoded once per process.

Why: the frozen encoders dominate the cost of the head-only reward model, and the same
prompt image and question appear in many pairs (and again at scoring time). Features are
deterministic functions of public pretrained weights and the input, so caching them changes
nothing about privacy or results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from embed.encoders import FrozenEncoders


def image_key(image: Image.Image) -> str:
    return hashlib.sha256(image.mode.encode() + repr(image.size).encode() + image.tobytes()).hexdigest()


class FeatureCache:
    """Text (L2-normalised MiniLM) and image (L2-normalised EfficientNet-lite0) features."""

    def __init__(self, encoders: FrozenEncoders | None = None) -> None:
        self._encoders = encoders
        self._texts: dict[str, torch.Tensor] = {}
        self._images: dict[str, torch.Tensor] = {}

    def __deepcopy__(self, memo: dict[int, object]) -> FeatureCache:
        return self  # a cache of pure functions of frozen weights: copies may share it

    @property
    def encoders(self) -> FrozenEncoders:
        if self._encoders is None:
            from embed.encoders import shared_encoders

            self._encoders = shared_encoders()
        return self._encoders

    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._texts))
        if missing:
            for text, vec in zip(missing, self.encoders.encode_texts(missing).cpu(), strict=True):
                self._texts[text] = vec
        return torch.stack([self._texts[t] for t in texts])

    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        keys = [image_key(img) for img in images]
        todo: dict[str, Image.Image] = {}
        for key, img in zip(keys, images, strict=True):
            if key not in self._images and key not in todo:
                todo[key] = img
        if todo:
            feats = F.normalize(self.encoders.encode_images(list(todo.values())).cpu(), dim=-1)
            for key, vec in zip(todo, feats, strict=True):
                self._images[key] = vec
        return torch.stack([self._images[k] for k in keys])


_SHARED: dict[int, FeatureCache] = {}


def shared_feature_cache(encoders: FrozenEncoders | None = None) -> FeatureCache:
    """One cache per encoder instance (``None`` = the process-wide shared encoders)."""
    key = id(encoders)
    if key not in _SHARED:
        _SHARED[key] = FeatureCache(encoders)
    return _SHARED[key]
