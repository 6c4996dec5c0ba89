"""Canonical JSON: the one byte encoding that every signature in MoR-Secure covers.

Signatures are over bytes, but our signed values (audit entries, envelopes, receipts,
privacy reports) are dicts. Both sides must produce identical bytes for the same value, so
keys are sorted, separators fixed, and non-finite floats refused (NaN has no canonical form).
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` deterministically as UTF-8 JSON bytes.

    >>> canonical_json({"b": 1, "a": [1.5, "x"]})
    b'{"a":[1.5,"x"],"b":1}'
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
