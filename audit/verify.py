"""Replaying a log directory: the auditor's verifier, and the writer's state on reopen.

One scan serves both, so the writer never continues a log that an auditor would reject.
Entries are checked line by line (JSON, canonical bytes, signature, fields, index = line
order, time never going back) and the scan stops at the first bad one: everything after it
is unanchored. Checkpoints are then checked against the rebuilt tree (signature, key,
origin, sizes and times monotone, root = the entries' root at that size, consistency with
the previous checkpoint). The key is the one the auditor supplies out of band;
``log_public_key.pem`` is only compared with it, never trusted.

Sealed by default: entries that no signed checkpoint covers (``uncovered``) fail
verification — a missing or emptied checkpoints file, or a tail cut back to an older
checkpoint's worth of entries plus a few, must not pass as "fine, with a note". A log still
being written (or a writer killed before ``close()``) has such a tail legitimately; an auditor
says so explicitly with ``allow_unsealed_tail=True`` (``mor audit verify --allow-unsealed-tail``).
What still cannot be detected (and why receipts exist): whole checkpointed batches cut off
together with their checkpoints; agents holding a signed receipt with a later index prove it.

Encodings are canonical: a line must be exactly the canonical JSON of what it parses to, and
signatures exactly 128 lowercase hex digits, so no byte of a log can change (case, spacing,
escapes) and still verify. ``log_public_key.pem`` is only compared with the supplied key, but
byte for byte against that key's PEM, for the same reason.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from audit.errors import AuditConfigError, InvalidProofError
from audit.merkle import MerkleTree, leaf_hash, verify_consistency
from audit.records import (
    ENTRY_DOMAIN,
    Checkpoint,
    checkpoint_from_obj,
    entry_shape_error,
)
from audit.storage import CHECKPOINTS, ENTRIES, PUBLIC_KEY, Lines, read_lines
from crypto.canonical import canonical_json
from crypto.errors import CryptoError, IntegrityError
from crypto.signing import VerifyKey

SIGNATURE_HEX = re.compile(r"[0-9a-f]{128}")  # Ed25519: 64 bytes, one spelling only


@dataclass(frozen=True)
class Problem:
    """One failed check: which file, which line (1-based), which entry index, and why."""

    file: str
    line: int | None
    index: int | None
    reason: str
    kind: str = "tampered"

    def __str__(self) -> str:
        where = self.file + (f" line {self.line}" if self.line is not None else "")
        entry = f" (entry index {self.index})" if self.index is not None else ""
        return f"{where}{entry}: {self.reason}"


@dataclass
class VerificationReport:
    """What ``mor audit verify`` prints; ``ok`` only when no check failed."""

    directory: Path
    entries: int = 0
    checkpoints: int = 0
    origin: str | None = None
    first_time: float | None = None
    last_time: float | None = None
    uncovered: int = 0
    actions_by_actor: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None


@dataclass
class LogState:
    """What a writer needs to continue the log (valid only when the report has no problems)."""

    tree: MerkleTree
    origin: str | None
    last_time: float
    last_checkpoint: Checkpoint | None
    files: dict[str, Lines]


def _parse(raw: bytes) -> Any:
    """JSON object from one line, or None when the bytes are not the canonical encoding."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # a tampered line nested 100k deep is just bad
        return None
    try:
        return obj if canonical_json(obj) == raw else None
    except ValueError:
        return None


def _signed(key: VerifyKey, sig: Any, data: bytes) -> bool:
    if not isinstance(sig, str) or not SIGNATURE_HEX.fullmatch(sig):
        return False  # bytes.fromhex would also take "AB" for "ab": a changed byte that still verified
    try:
        key.verify(bytes.fromhex(sig), data)
    except (IntegrityError, ValueError, TypeError):
        return False
    return True


def _scan_entries(lines: Lines, key: VerifyKey, report: VerificationReport, progress: bool) -> MerkleTree:
    tree, actions = MerkleTree(), Counter[tuple[str, str]]()
    for lineno, raw in enumerate(tqdm(lines.lines, desc="entries", unit="entry", disable=not progress), 1):
        expected = tree.size
        obj = _parse(raw)
        reason: str | None = None
        if not isinstance(obj, dict) or set(obj) != {"entry", "sig"}:
            reason = "not a canonical {entry, sig} JSON line (bytes changed?)"
        elif not _signed(key, obj["sig"], ENTRY_DOMAIN + canonical_json(obj["entry"])):
            reason = "signature does not verify under the supplied key (entry altered or forged)"
        else:
            entry = obj["entry"]
            reason = entry_shape_error(entry)
            if reason is None and report.origin is not None and entry["log"] != report.origin:
                reason = f"belongs to log {entry['log']!r}, not {report.origin!r}"
            elif reason is None and entry["index"] != expected:
                reason = (f"holds index {entry['index']} where {expected} belongs "
                          "(an entry was deleted, inserted or reordered)")
            elif reason is None and report.last_time is not None and entry["time"] < report.last_time:
                reason = f"time {entry['time']} goes back before {report.last_time}"
        if reason is not None:
            report.problems.append(Problem(ENTRIES, lineno, expected, reason))
            break
        report.origin = entry["log"]
        report.first_time = entry["time"] if report.first_time is None else report.first_time
        report.last_time = entry["time"]
        actions[(entry["actor"], entry["action"])] += 1
        tree.append(leaf_hash(canonical_json(entry)))
    else:
        if lines.torn:
            report.problems.append(Problem(
                ENTRIES, len(lines.lines) + 1, tree.size,
                f"incomplete last line ({len(lines.torn)} bytes, no newline): a crash mid-write or a cut; "
                "reopening the log for writing truncates it and records the recovery", kind="torn"))
    for (actor, action), count in sorted(actions.items()):
        report.actions_by_actor.setdefault(actor, {})[action] = count
    report.entries = tree.size
    return tree


def _entry_time(lines: Lines, index: int) -> float:
    return float(json.loads(lines.lines[index])["entry"]["time"])


def _scan_checkpoints(lines: Lines, entries: Lines, tree: MerkleTree, key: VerifyKey, entries_ok: bool,
                      report: VerificationReport) -> Checkpoint | None:
    prev: Checkpoint | None = None
    for lineno, raw in enumerate(lines.lines, 1):
        obj = _parse(raw)
        cp = checkpoint_from_obj(obj) if obj is not None else "not a canonical JSON line (bytes changed?)"
        reason: str | None = cp if isinstance(cp, str) else None
        index: int | None = None
        if isinstance(cp, Checkpoint):
            if not _signed(key, cp.signature, cp.signed_bytes()):
                reason = "signature does not verify under the supplied key"
            elif cp.key != key.fingerprint():
                reason = f"names signer {cp.key[:16]}…, not the supplied key {key.fingerprint()[:16]}…"
            elif report.origin is not None and cp.origin != report.origin:
                reason = f"origin {cp.origin!r} differs from the log's {report.origin!r}"
            elif prev is not None and (cp.size < prev.size or cp.time < prev.time):
                reason = f"size/time go back: ({prev.size}, {prev.time}) -> ({cp.size}, {cp.time})"
            elif cp.size > tree.size:
                index = tree.size
                reason = (f"signed for {cp.size} entries but only {tree.size} verify: entries from index "
                          f"{tree.size} (entries.jsonl line {tree.size + 1}) are missing or bad (log truncated)")
                if not entries_ok:
                    continue  # already reported at the first bad entry
            elif cp.root != tree.root(cp.size).hex():
                start = prev.size if prev is not None else 0
                index = start
                reason = (f"root differs from the root of entries 0..{cp.size - 1}: a forked checkpoint or "
                          f"rewritten entries in {start}..{cp.size - 1}")
            elif cp.size > 0 and cp.time < _entry_time(entries, cp.size - 1):
                reason = "checkpoint time is before the last entry it covers"
            elif prev is not None:
                try:
                    verify_consistency(prev.size, cp.size, prev.root, cp.root,
                                       tree.consistency_path(prev.size, cp.size))
                except InvalidProofError as exc:
                    reason = f"not consistent with checkpoint size {prev.size}: {exc}"
        if reason is not None:
            report.problems.append(Problem(CHECKPOINTS, lineno, index, reason))
            continue
        assert isinstance(cp, Checkpoint)
        report.origin = report.origin or cp.origin
        report.checkpoints += 1
        prev = cp
    if lines.torn:
        report.problems.append(Problem(CHECKPOINTS, len(lines.lines) + 1, None,
                                       f"incomplete last line ({len(lines.torn)} bytes, no newline)", kind="torn"))
    return prev


def scan(directory: Path, key: VerifyKey, *, progress: bool = False) -> tuple[VerificationReport, LogState]:
    """Replay ``directory`` under ``key``: the report, and the state a writer continues from."""
    report = VerificationReport(directory=directory)
    key_file = directory / PUBLIC_KEY
    if key_file.exists():
        try:
            stored = VerifyKey.load(key_file)
        except CryptoError as exc:
            report.problems.append(Problem(PUBLIC_KEY, None, None, f"unreadable: {exc}"))
        else:
            if stored != key:
                report.problems.append(Problem(PUBLIC_KEY, None, None, (
                    f"the log says it was written with key {stored.fingerprint()[:16]}…, but the supplied key is "
                    f"{key.fingerprint()[:16]}…"), kind="key"))
            elif key_file.read_bytes() != key.pem():
                report.problems.append(Problem(PUBLIC_KEY, None, None, "the right key, but not in its canonical "
                                               "PEM bytes (the file was changed)"))
    files = {ENTRIES: read_lines(directory / ENTRIES), CHECKPOINTS: read_lines(directory / CHECKPOINTS)}
    tree = _scan_entries(files[ENTRIES], key, report, progress)
    entries_ok = not any(p.file == ENTRIES and p.kind != "torn" for p in report.problems)
    last = _scan_checkpoints(files[CHECKPOINTS], files[ENTRIES], tree, key, entries_ok, report)
    report.uncovered = tree.size - (last.size if last is not None else 0)
    state = LogState(tree=tree, origin=report.origin, last_time=report.last_time or 0.0, last_checkpoint=last,
                     files=files)
    if last is not None:
        state.last_time = max(state.last_time, last.time)
    return report, state


def _unsealed_tail(report: VerificationReport) -> Problem:
    first = report.entries - report.uncovered
    where = (f"{CHECKPOINTS} is missing or empty" if report.checkpoints == 0
             else f"the last signed checkpoint covers {first}")
    return Problem(CHECKPOINTS, None, first, (
        f"entries {first}..{report.entries - 1} ({report.uncovered}) are covered by no signed checkpoint ({where}): "
        "a cut, an emptied checkpoint file or a writer that never closed; for a log still being written, "
        "verify with --allow-unsealed-tail"), kind="unsealed")


def verify_log(directory: str | Path, public_key: VerifyKey | str | Path, *, progress: bool = False,
               allow_unsealed_tail: bool = False) -> VerificationReport:
    """Check a whole log directory against the auditor's ``public_key`` (a key or a PEM path).

    ``allow_unsealed_tail``: accept entries after the last signed checkpoint (a live log);
    by default they fail verification (see the module docstring).
    """
    directory = Path(directory)
    if not (directory / ENTRIES).exists() and not (directory / CHECKPOINTS).exists():
        raise AuditConfigError(f"{directory}: not an audit log ({ENTRIES} and {CHECKPOINTS} are missing)")
    key = public_key if isinstance(public_key, VerifyKey) else VerifyKey.load(public_key)
    report = scan(directory, key, progress=progress)[0]
    if report.uncovered and not allow_unsealed_tail:
        report.problems.append(_unsealed_tail(report))
    return report
