"""Signed score envelopes: what an agent submits for one scoring task.

An envelope binds the scores to *who* sent them, *for which* round and task, and *when*,
under the sender's Ed25519 key. The signature covers ``DOMAIN`` + canonical JSON of the
header; the header holds the vector length and, for ``ckks`` payloads, the SHA-256 of every
ciphertext and of the public context, so nothing can be swapped, truncated or re-targeted.
``plain`` payloads (the ``tls-only`` privacy mode) carry the scores in the signed header.
``payload_sha256`` (optional) names the exact task payload the scores are for
(:func:`wire.messages.payload_digest`): a member sets it on public rounds, so whoever opens
that one envelope — the fused-only key holder — can check it is a published public set and
not, say, GRPO completions a dishonest server relabelled as a public round.

:func:`open_envelope` checks framing, signature, expected sender/round/task, freshness and
replay — in that order, and all **before** any ciphertext is deserialised — and every
failure is the same opaque :class:`~crypto.errors.IntegrityError` (no oracle for forgers).
The nonce is recorded only after the signature verified, so forgeries cannot burn nonces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from crypto.canonical import canonical_json
from crypto.ckks import MAX_CHUNKS, MAX_CIPHERTEXT_BYTES, PublicContext, SealedVector
from crypto.errors import IntegrityError
from crypto.nonces import NonceStore
from crypto.signing import SigningKey, VerifyKey

PayloadKind = Literal["ckks", "plain"]
ENVELOPE_VERSION = 1
DOMAIN = b"mor-secure/score-envelope/v1\n"
DEFAULT_MAX_AGE_S = 300.0
DEFAULT_MAX_FUTURE_S = 30.0
MAX_PLAIN_SCORES = 65536
_FIELDS = {"v", "kind", "sender", "round_id", "task_id", "nonce", "timestamp", "length",
           "context_sha256", "ciphertexts", "scores", "signature"}
_OPTIONAL_FIELDS = {"payload_sha256"}
BINARY_MEDIA_TYPE = "application/octet-stream"
_WIRE_OPENING = b'{"ciphertexts":['  # how the canonical JSON wire form of every envelope begins
MAX_BINARY_HEAD_BYTES = 2 * 1024 * 1024  # a plain envelope's scores (65,536 floats) travel in the head


@dataclass(frozen=True)
class Envelope:
    """A signed envelope as it travels (see :meth:`to_dict` / :meth:`to_bytes`)."""

    kind: PayloadKind
    sender: str
    round_id: str
    task_id: str
    nonce: str
    timestamp: float
    length: int
    context_sha256: str | None
    ciphertexts: tuple[bytes, ...]
    scores: tuple[float, ...] | None
    signature: bytes
    payload_sha256: str | None = None

    def _fields(self) -> dict[str, Any]:
        """What the signed header and the wire form share, in one place so they cannot drift."""
        return {
            "v": ENVELOPE_VERSION,
            "kind": self.kind,
            "sender": self.sender,
            "round_id": self.round_id,
            "task_id": self.task_id,
            "nonce": self.nonce,
            "timestamp": self.timestamp,
            "length": self.length,
            "context_sha256": self.context_sha256,
            "scores": list(self.scores) if self.scores is not None else None,
            **({"payload_sha256": self.payload_sha256} if self.payload_sha256 is not None else {}),
        }

    def header(self) -> dict[str, Any]:
        """The signed content: everything but the signature, ciphertexts by their SHA-256."""
        return {
            **self._fields(),
            "ciphertext_sha256": [hashlib.sha256(c).hexdigest() for c in self.ciphertexts],
        }

    def signed_bytes(self) -> bytes:
        return DOMAIN + canonical_json(self.header())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (binary fields base64) for HTTP bodies and storage."""
        return {
            **self._fields(),
            "ciphertexts": [base64.b64encode(c).decode("ascii") for c in self.ciphertexts],
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    def to_bytes(self) -> bytes:
        return self._wire

    def sha256(self) -> str:
        """Digest of the wire form: what audit logs and receipts record instead of content."""
        return self._digest

    def to_binary(self) -> bytes:
        """The binary wire form: one line of canonical JSON (every field but the ciphertexts, which it
        lists by length), then the raw ciphertexts back to back.

        Why a second form: base64 makes a ckks envelope a third larger and costs an encode on the
        sender and a JSON parse plus a decode on the server for every envelope (issue 14 §6). It
        carries the same fields, so :meth:`from_binary` yields the same :class:`Envelope` — same
        signature, same :meth:`sha256` — as :meth:`from_dict` of :meth:`to_dict`.
        """
        head = {**self._fields(), "signature": base64.b64encode(self.signature).decode("ascii"),
                "ciphertext_bytes": [len(c) for c in self.ciphertexts]}
        return canonical_json(head) + b"\n" + b"".join(self.ciphertexts)

    @classmethod
    def from_binary(cls, data: bytes) -> Envelope:
        """Parse :meth:`to_binary`'s form (canonical JSON holds no raw newline); any problem: IntegrityError."""
        end = data.find(b"\n", 0, MAX_BINARY_HEAD_BYTES)
        try:
            if end < 0:
                raise ValueError
            head = json.loads(data[:end])
            if not isinstance(head, dict) or "ciphertexts" in head:
                raise ValueError
            lengths = head.pop("ciphertext_bytes")
            if not isinstance(lengths, list) or len(lengths) > MAX_CHUNKS or \
                    any(type(n) is not int or not 0 < n <= MAX_CIPHERTEXT_BYTES for n in lengths) or \
                    sum(lengths) != len(data) - end - 1:
                raise ValueError
            view, start, raw = memoryview(data), end + 1, []
            for n in lengths:
                raw.append(bytes(view[start:start + n]))
                start += n
            return _parse({**head, "ciphertexts": []}, tuple(raw))
        except (KeyError, ValueError, TypeError, OverflowError, binascii.Error, RecursionError):
            raise IntegrityError() from None

    @property
    def _wire(self) -> bytes:
        return self._memo("wire", self._make_wire)

    def _make_wire(self) -> bytes:
        # computed once per envelope: the server asks for the digest on arrival, at storage and at fusion, and a
        # ckks envelope's wire form is ~440 KB of base64 (issue 14 §6). ``ciphertexts`` is the smallest key, so
        # canonical JSON opens with it; its base64 strings need no escaping, so they are spliced in as bytes
        # instead of passing ~440 KB through json.dumps (~1 ms)
        rest = canonical_json({**self._fields(), "ciphertexts": [],
                               "signature": base64.b64encode(self.signature).decode("ascii")})
        if not rest.startswith(_WIRE_OPENING):  # cannot happen while "ciphertexts" sorts first; never guess
            return canonical_json(self.to_dict())
        # one join: each ~330 KB piece is copied once, not once per concatenation (a 64-score envelope, warm
        # heap: 0.43-0.52 -> 0.41-0.43 ms; more where each fresh buffer still costs page faults)
        parts: list[bytes | memoryview] = [_WIRE_OPENING]
        for i, c in enumerate(self.ciphertexts):
            parts += (b',"' if i else b'"', binascii.b2a_base64(c, newline=False), b'"')
        parts.append(memoryview(rest)[len(_WIRE_OPENING):])
        return b"".join(parts)

    @property
    def _digest(self) -> str:
        return self._memo("digest", lambda: hashlib.sha256(self._wire).hexdigest())

    def _memo(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per (immutable) envelope. Not ``functools.cached_property``: on Python 3.11 that
        holds one lock for every instance while it computes, so concurrent requests queued behind each
        other's 440 KB encodings; two threads racing here at worst both compute the same value."""
        memo = self.__dict__.setdefault("_memo_values", {})
        if name not in memo:
            memo[name] = make()
        return memo[name]

    @classmethod
    def from_dict(cls, data: Any) -> Envelope:
        """Parse a received envelope. Any framing problem is an :class:`IntegrityError`."""
        try:
            return _parse(data)
        except (KeyError, ValueError, TypeError, OverflowError, binascii.Error):  # 10**400 overflows a float
            raise IntegrityError() from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise IntegrityError() from None
        return cls.from_dict(parsed)


def _text(value: Any, max_len: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise ValueError
    value.encode("utf-8")  # a lone surrogate cannot be signed or stored: UnicodeEncodeError, a ValueError
    return value


def _hex(value: Any, length: int) -> str:
    if not isinstance(value, str) or len(value) != length:
        raise ValueError
    bytes.fromhex(value)
    return value


def _parse(data: Any, raw: tuple[bytes, ...] | None = None) -> Envelope:
    """``data`` as :meth:`Envelope.to_dict` has it; ``raw``: the ciphertexts, when they came in binary."""
    if not isinstance(data, Mapping) or not _FIELDS <= set(data) <= _FIELDS | _OPTIONAL_FIELDS \
            or data["v"] != ENVELOPE_VERSION:
        raise ValueError
    payload_sha256 = _hex(data["payload_sha256"], 64) if "payload_sha256" in data else None
    kind = data["kind"]
    length, timestamp = data["length"], data["timestamp"]
    if type(length) is not int or length < 1:
        raise ValueError
    if type(timestamp) not in (int, float) or not math.isfinite(timestamp):
        raise ValueError
    ciphertexts_b64, scores_raw, context_sha = data["ciphertexts"], data["scores"], data["context_sha256"]
    if not isinstance(ciphertexts_b64, list):
        raise ValueError
    ciphertexts = raw if raw is not None else \
        tuple(base64.b64decode(_text(c, 2 * MAX_CIPHERTEXT_BYTES), validate=True) for c in ciphertexts_b64)
    scores: tuple[float, ...] | None = None
    if kind == "ckks":
        if scores_raw is not None or not 1 <= len(ciphertexts) <= MAX_CHUNKS:
            raise ValueError
        context_sha = _hex(context_sha, 64)
    elif kind == "plain":
        if ciphertexts or context_sha is not None or not isinstance(scores_raw, list):
            raise ValueError
        if len(scores_raw) != length or length > MAX_PLAIN_SCORES:
            raise ValueError
        if any(type(s) not in (int, float) or not math.isfinite(s) for s in scores_raw):
            raise ValueError
        scores = tuple(float(s) for s in scores_raw)
    else:
        raise ValueError
    return Envelope(
        kind=kind,
        sender=_text(data["sender"], 512),
        round_id=_text(data["round_id"], 256),
        task_id=_text(data["task_id"], 256),
        nonce=_hex(data["nonce"], 32),
        timestamp=float(timestamp),
        length=length,
        context_sha256=context_sha,
        ciphertexts=ciphertexts,
        scores=scores,
        signature=base64.b64decode(_text(data["signature"], 128), validate=True),
        payload_sha256=payload_sha256,
    )


@dataclass(frozen=True)
class OpenedEnvelope:
    """A verified envelope: ``sealed`` for ckks payloads, ``scores`` for plain ones."""

    kind: PayloadKind
    sender: str
    round_id: str
    task_id: str
    nonce: str
    timestamp: float
    length: int
    sealed: SealedVector | None
    scores: tuple[float, ...] | None
    envelope_sha256: str


def _make(
    kind: PayloadKind,
    *,
    signing_key: SigningKey,
    sender: str,
    round_id: str,
    task_id: str,
    length: int,
    context_sha256: str | None,
    ciphertexts: tuple[bytes, ...],
    scores: tuple[float, ...] | None,
    now: float | None,
    rng: Callable[[int], bytes] | None,
    payload_sha256: str | None = None,
) -> Envelope:
    for name, value in (("sender", sender), ("round_id", round_id), ("task_id", task_id)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}: must be a non-empty string")
    nonce = (rng or secrets.token_bytes)(16).hex()
    unsigned = Envelope(kind, sender, round_id, task_id, nonce, float(time.time() if now is None else now),
                        length, context_sha256, ciphertexts, scores, b"", payload_sha256)
    return replace(unsigned, signature=signing_key.sign(unsigned.signed_bytes()))


def seal_scores(
    scores: Sequence[float],
    context: PublicContext,
    *,
    signing_key: SigningKey,
    sender: str,
    round_id: str,
    task_id: str,
    now: float | None = None,
    rng: Callable[[int], bytes] | None = None,
    payload_sha256: str | None = None,
) -> Envelope:
    """Encrypt ``scores`` under the server's public context and sign the envelope."""
    sealed = context.encrypt(scores)
    return _make("ckks", signing_key=signing_key, sender=sender, round_id=round_id, task_id=task_id,
                 length=sealed.length, context_sha256=sealed.context_sha256, ciphertexts=sealed.chunks,
                 scores=None, now=now, rng=rng, payload_sha256=payload_sha256)


def sign_plain_scores(
    scores: Sequence[float],
    *,
    signing_key: SigningKey,
    sender: str,
    round_id: str,
    task_id: str,
    now: float | None = None,
    rng: Callable[[int], bytes] | None = None,
) -> Envelope:
    """Sign scores sent in the clear (``tls-only`` mode: still authenticated, not encrypted)."""
    values = tuple(float(s) for s in scores)
    if not values or len(values) > MAX_PLAIN_SCORES or not all(math.isfinite(v) for v in values):
        raise ValueError(f"scores: need 1..{MAX_PLAIN_SCORES} finite values")
    return _make("plain", signing_key=signing_key, sender=sender, round_id=round_id, task_id=task_id,
                 length=len(values), context_sha256=None, ciphertexts=(), scores=values, now=now, rng=rng)


def open_envelope(
    envelope: Envelope | Mapping[str, Any] | bytes,
    *,
    verify_key: VerifyKey,
    nonces: NonceStore,
    expected_sender: str | None = None,
    expected_round: str | None = None,
    expected_task: str | None = None,
    expected_kind: PayloadKind | None = None,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    max_future_s: float = DEFAULT_MAX_FUTURE_S,
    now: float | None = None,
) -> OpenedEnvelope:
    """Verify an envelope from ``verify_key``'s owner; raise :class:`IntegrityError` on any failure."""
    if isinstance(envelope, Envelope):
        env = envelope
    elif isinstance(envelope, bytes | bytearray):
        env = Envelope.from_bytes(bytes(envelope))
    else:
        env = Envelope.from_dict(envelope)
    verify_key.verify(env.signature, env.signed_bytes())
    expectations = ((expected_sender, env.sender), (expected_round, env.round_id),
                    (expected_task, env.task_id), (expected_kind, env.kind))
    if any(want is not None and want != got for want, got in expectations):
        raise IntegrityError()
    current = time.time() if now is None else now
    if not current - max_age_s <= env.timestamp <= current + max_future_s:
        raise IntegrityError()
    if not nonces.check_and_add(env.sender, env.nonce, env.timestamp + max_age_s):
        raise IntegrityError()
    sealed = None
    if env.kind == "ckks":
        assert env.context_sha256 is not None
        sealed = SealedVector(env.ciphertexts, env.length, env.context_sha256)
    return OpenedEnvelope(env.kind, env.sender, env.round_id, env.task_id, env.nonce, env.timestamp,
                          env.length, sealed, env.scores, env.sha256())
