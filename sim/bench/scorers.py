"""Three cheap, deterministic, *different* score functions standing in for three members' models.

Sections that compare the federated path with an in-process one (5, 6) need both sides to do
exactly the same scoring work, so the ratio isolates what federation adds (store, sealing,
polling, decryption); these functions cost microseconds and depend on the question and the
response, so every item gets a distinct, reproducible score. Section 1 uses the real reward
models instead.

>>> [round(SCORERS[i]("what colour?", "a red circle"), 3) for i in range(3)]
[0.667, -0.5, 0.895]
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

ScoreFn = Callable[[str, str], float]


def _length(question: str, response: str) -> float:
    return min(len(response), 30) / 18.0


def _overlap(question: str, response: str) -> float:
    q, r = set(question.lower().split()), set(response.lower().split())
    return len(q & r) / max(len(r), 1) - 0.5


def _digest(question: str, response: str) -> float:
    return int.from_bytes(hashlib.sha256((question + "\0" + response).encode()).digest()[:2], "big") / 65535.0


SCORERS: tuple[ScoreFn, ...] = (_length, _overlap, _digest)
