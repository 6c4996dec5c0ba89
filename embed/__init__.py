"""Frozen pretrained encoders that ship inside PyPI packages (see :mod:`embed.encoders`)."""

from embed.encoders import FrozenEncoders, shared_encoders
from embed.errors import EmbedError, EncoderLoadError

__all__ = ["EmbedError", "EncoderLoadError", "FrozenEncoders", "shared_encoders"]
