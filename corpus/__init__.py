"""Offline data for MoR-Secure: prompts, hidden preference rules, pairs and their storage.

Pure data: imports nothing from ``server`` or ``client_agent``. Everything is built from data
that ships inside installed packages (easy-vqa, scikit-image, matplotlib) — no downloads.
"""

from corpus.builders import build_calibration_set, build_client_pairs, build_public_pairs, build_sft_examples
from corpus.errors import CorpusError, FormatError, MissingImageError, SpecError
from corpus.prompts import build_prompts
from corpus.store import load_pairs, save_pairs
from corpus.styles import STYLES, PreferenceStyle
from corpus.types import PreferencePair, Prompt

__all__ = [
    "STYLES",
    "CorpusError",
    "FormatError",
    "MissingImageError",
    "PreferencePair",
    "PreferenceStyle",
    "Prompt",
    "SpecError",
    "build_calibration_set",
    "build_client_pairs",
    "build_prompts",
    "build_public_pairs",
    "build_sft_examples",
    "load_pairs",
    "save_pairs",
]
