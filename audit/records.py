"""What one log line holds, how it is checked on the way in, and how it is signed.

An entry is a small canonical-JSON object; its bytes are the Merkle leaf. Each line is
``{"entry": ..., "sig": ...}`` where ``sig`` is Ed25519 over a domain tag and the entry bytes,
so a changed byte is pinned to *its* line by the verifier (the checkpoint roots alone would
only say "somewhere in this batch"). Checkpoints are ``{"checkpoint": ..., "sig": ...}`` with
their own domain tag, so an entry signature can never be replayed as a checkpoint.

Why the input guards: the log is read by auditors from other institutions; it must carry
*digests* of payloads, never payloads. ``details`` refuses any list holding more than
:data:`MAX_FLOATS_PER_LIST` floats (what a raw score vector looks like), refuses non-JSON
values, and caps an entry at :data:`MAX_ENTRY_BYTES`. This is a tripwire for honest mistakes,
not a wall: a dict of scores would pass, so callers still choose what they log. Non-finite
floats (a NaN loss) are recorded as the strings ``"nan"``, ``"inf"``, ``"-inf"`` — JSON has no
NaN, and dropping a training metric's entry would be worse than spelling it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from audit.errors import EntryRejectedError
from crypto.canonical import canonical_json
from crypto.signing import SigningKey

ENTRY_VERSION = 1
ENTRY_DOMAIN = b"mor-audit/entry/v1\n"
CHECKPOINT_DOMAIN = b"mor-audit/checkpoint/v1\n"
MAX_FLOATS_PER_LIST = 4
MAX_ENTRY_BYTES = 64 * 1024
MAX_DEPTH = 8

NAME_RE = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
DIGEST_RE = re.compile(r"^(?:[a-z0-9\-]{1,16}:)?[0-9a-f]{32,128}$")
ENTRY_KEYS = frozenset({"v", "log", "index", "time", "actor", "action", "outcome", "round_id", "task_id",
                        "digests", "details"})
CHECKPOINT_KEYS = frozenset({"v", "origin", "size", "root", "time", "key"})

JSON = Any


@dataclass(frozen=True)
class EntryReceipt:
    """Where an append landed: what the server cites in replies and signed receipts."""

    index: int
    leaf_hash_hex: str
    tree_size: int


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement "the log ``origin`` had ``size`` entries with ``root`` at ``time``"."""

    origin: str
    size: int
    root: str
    time: float  # seconds since the epoch, as the writer's clock gave it (int or float)
    key: str
    signature: str

    def body(self) -> dict[str, Any]:
        return {"v": ENTRY_VERSION, "origin": self.origin, "size": self.size, "root": self.root,
                "time": self.time, "key": self.key}

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.body(), "sig": self.signature}

    def signed_bytes(self) -> bytes:
        return CHECKPOINT_DOMAIN + canonical_json(self.body())


def sign_checkpoint(key: SigningKey, *, origin: str, size: int, root: str, time: float) -> Checkpoint:
    unsigned = Checkpoint(origin, size, root, time, key.verify_key().fingerprint(), "")
    return Checkpoint(origin, size, root, time, unsigned.key, key.sign(unsigned.signed_bytes()).hex())


def _check_text(value: object, what: str, *, max_len: int, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise EntryRejectedError(f"{what}: must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise EntryRejectedError(f"{what}: longer than {max_len} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise EntryRejectedError(f"{what}: contains control characters")
    if pattern is not None and not pattern.match(value):
        raise EntryRejectedError(f"{what}: {value!r} does not match {pattern.pattern}")
    return value


def _clean(value: object, path: str, depth: int) -> JSON:
    """Copy ``value`` as plain JSON, refusing what must not be logged (see the module docstring)."""
    if depth > MAX_DEPTH:
        raise EntryRejectedError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EntryRejectedError(f"{path}: key {key!r} is not a string")
            out[key] = _clean(item, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        floats = sum(1 for item in value if isinstance(item, float))
        if floats > MAX_FLOATS_PER_LIST:
            raise EntryRejectedError(
                f"{path}: a list of {floats} floats looks like raw scores; log a digest of them instead "
                f"(at most {MAX_FLOATS_PER_LIST} floats per list)")
        return [_clean(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise EntryRejectedError(f"{path}: {type(value).__name__} is not JSON (str, number, bool, None, list, dict)")


def build_entry(*, log: str, index: int, time: float, actor: str, action: str, outcome: str,
                round_id: str | None, task_id: str | None, digests: Mapping[str, str] | None,
                details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``append`` input and return the entry object (raises :class:`EntryRejectedError`)."""
    _check_text(actor, "actor", max_len=512)
    _check_text(action, "action", max_len=64, pattern=NAME_RE)
    _check_text(outcome, "outcome", max_len=64, pattern=NAME_RE)
    for name, value in (("round_id", round_id), ("task_id", task_id)):
        if value is not None:
            _check_text(value, name, max_len=128)
    clean_digests: dict[str, str] = {}
    for name, digest in (digests or {}).items():
        _check_text(name, "digests key", max_len=64)
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise EntryRejectedError(f"digests.{name}: {digest!r} is not a hex digest ([algo:]hex, lowercase)")
        clean_digests[name] = digest
    if details is not None and not isinstance(details, Mapping):
        raise EntryRejectedError(f"details: must be a mapping, got {type(details).__name__}")
    entry = {"v": ENTRY_VERSION, "log": log, "index": index, "time": time, "actor": actor, "action": action,
             "outcome": outcome, "round_id": round_id, "task_id": task_id, "digests": clean_digests,
             "details": _clean(details or {}, "details", 0)}
    size = len(canonical_json(entry))
    if size > MAX_ENTRY_BYTES:
        raise EntryRejectedError(f"entry is {size} bytes; the limit is {MAX_ENTRY_BYTES} (log digests, not data)")
    return entry


def entry_line(entry: Mapping[str, Any], key: SigningKey) -> tuple[bytes, bytes]:
    """(the line to write, without newline; the leaf bytes) for a validated entry."""
    leaf = canonical_json(entry)
    return canonical_json({"entry": entry, "sig": key.sign(ENTRY_DOMAIN + leaf).hex()}), leaf


def entry_shape_error(entry: Any) -> str | None:
    """Why a parsed entry object is malformed, or None (the verifier's schema check)."""
    if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
        return "entry fields are not exactly " + ",".join(sorted(ENTRY_KEYS))
    if entry["v"] != ENTRY_VERSION:
        return f"unknown entry version {entry['v']!r}"
    if not isinstance(entry["index"], int) or isinstance(entry["index"], bool):
        return "index is not an integer"
    if not isinstance(entry["time"], int | float) or isinstance(entry["time"], bool):
        return "time is not a number"
    for name in ("log", "actor", "action", "outcome"):
        if not isinstance(entry[name], str) or not entry[name]:
            return f"{name} is not a non-empty string"
    for name in ("round_id", "task_id"):
        if entry[name] is not None and not isinstance(entry[name], str):
            return f"{name} is not a string or null"
    if not isinstance(entry["digests"], dict) or not isinstance(entry["details"], dict):
        return "digests/details are not objects"
    return None


def checkpoint_from_obj(obj: Any) -> Checkpoint | str:
    """A parsed checkpoint line -> :class:`Checkpoint`, or the reason it is malformed."""
    if not isinstance(obj, dict) or set(obj) != {"checkpoint", "sig"} or not isinstance(obj["sig"], str):
        return "line is not {checkpoint, sig}"
    body = obj["checkpoint"]
    if not isinstance(body, dict) or set(body) != CHECKPOINT_KEYS or body["v"] != ENTRY_VERSION:
        return "checkpoint fields are not exactly " + ",".join(sorted(CHECKPOINT_KEYS))
    types_ok = (isinstance(body["origin"], str) and isinstance(body["size"], int) and body["size"] >= 0
                and isinstance(body["root"], str) and isinstance(body["time"], int | float)
                and isinstance(body["key"], str))
    if not types_ok:
        return "checkpoint field types are wrong"
    return Checkpoint(body["origin"], body["size"], body["root"], body["time"], body["key"], obj["sig"])
