"""Exceptions raised by :mod:`corpus`.

One tree, so a caller that loads data from disk can catch exactly what it means::

    CorpusError
     ├── FormatError         a pairs.jsonl line that is not valid JSON, or lacks / mistypes a
     │                       field; the message always names ``file:line`` and the key.
     ├── MissingImageError   a record points at an image file that is absent or unreadable;
     │                       the message names the image file and the line that referenced it.
     └── SpecError           a builder was asked for something that cannot exist (unknown
                             style, domain or split, a negative count, an invalid Prompt).
"""

from __future__ import annotations


class CorpusError(Exception):
    """Base of every error raised by :mod:`corpus`."""


class FormatError(CorpusError):
    """A stored record is malformed; the message names the file, line and key."""


class MissingImageError(CorpusError):
    """A stored record references an image that cannot be read."""


class SpecError(CorpusError, ValueError):
    """A request for data that cannot exist (also a ``ValueError``: it is bad input)."""
