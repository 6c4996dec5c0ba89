"""Deterministic train / public / test assignment by *source image id*.

Why by source: augmented variants (crops, flips, intensity changes) of one source image are
near-duplicates, so a split by prompt would leak test images into training. Each source id
lands in exactly one split, decided by a keyed hash (stable across runs, Python versions and
PYTHONHASHSEED). ``public`` is the server-held slice used for router pairs and calibration.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

SPLITS: tuple[str, ...] = ("train", "public", "test")
TEST_FRACTION = 0.2
PUBLIC_FRACTION = 0.1


def _rank(source_id: str) -> str:
    return hashlib.sha256(b"mor-secure-split-v1:" + source_id.encode()).hexdigest()


def assign_splits(source_ids: Iterable[str]) -> dict[str, str]:
    """Map each source id to a split; with >= 3 ids every split gets at least one."""
    ordered = sorted(set(source_ids), key=_rank)
    n = len(ordered)
    n_test = max(1, math.floor(n * TEST_FRACTION)) if n >= 3 else 0
    n_public = max(1, math.floor(n * PUBLIC_FRACTION)) if n >= 3 else 0
    out = {}
    for i, sid in enumerate(ordered):
        out[sid] = "test" if i < n_test else "public" if i < n_test + n_public else "train"
    return out
