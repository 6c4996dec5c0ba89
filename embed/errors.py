"""Exceptions raised by :mod:`embed`.

::

    EmbedError
     └── EncoderLoadError    pretrained weights or a text-model folder are missing or unreadable
                             (the message names the path and what was expected there).
"""

from __future__ import annotations


class EmbedError(Exception):
    """Base of every error raised by :mod:`embed`."""


class EncoderLoadError(EmbedError):
    """Weights for a frozen encoder cannot be loaded from the named path."""
