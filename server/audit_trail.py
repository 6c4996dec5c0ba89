"""The service's :class:`~server.services.AuditTrail` over the real :class:`audit.AuditLog`.

Why an adapter and not the log itself: the HTTP layer, the coordinator and the trainer only
ever *record* and *cite* entries (index + leaf hash in receipts and replies) and hand out the
signed head and inclusion proofs in the wire shapes of :mod:`wire.messages`. Keeping that view
narrow lets one process share a single log — the only writer of its directory — between the
API thread and the training thread.

Wire forms (what ``GET /v1/audit/checkpoint`` and ``/v1/audit/proof/{i}`` return): the
checkpoint's hex signature travels as base64 and its ``root`` as ``root_sha256``; the signed
bytes are the audit package's own (:meth:`audit.Checkpoint.signed_bytes`), so a verifier
rebuilds the :class:`audit.Checkpoint` with :func:`audit.wire_form.checkpoint_from_wire` and checks it with the
writer's public key, obtained out of band (for agents: the key in ``EnrolResponse``).

Auditors read the log itself back (:class:`server.audit_export.AuditExport`): the files' exact
lines, so a copy written from them is the log byte for byte and verifies as the original would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from audit import AuditLog, Checkpoint
from audit.storage import CHECKPOINTS, ENTRIES, PUBLIC_KEY
from audit.wire_form import checkpoint_to_wire, inclusion_to_wire
from crypto.signing import SigningKey
from server.audit_export import LineIndex
from server.services import AuditRecord


class AuditLogTrail:
    """:class:`~server.services.AuditTrail` backed by one open :class:`audit.AuditLog` (thread-safe)."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self._entries = LineIndex(log.directory / ENTRIES)
        self._checkpoints = LineIndex(log.directory / CHECKPOINTS)

    @classmethod
    def open(cls, directory: Path, signing_key: SigningKey, *, origin: str,
             checkpoint_every: int = 64) -> AuditLogTrail:
        """Open (or create, or recover after a crash) the log in ``directory`` as this process's writer."""
        return cls(AuditLog.open(directory, signing_key=signing_key, origin=origin, checkpoint_every=checkpoint_every))

    def record(self, actor: str, action: str, data: Mapping[str, Any]) -> AuditRecord:
        round_id, task_id = data.get("round_id"), data.get("task_id")
        receipt = self.log.append(actor=actor, action=action,
                                  round_id=round_id if isinstance(round_id, str) else None,
                                  task_id=task_id if isinstance(task_id, str) else None, details=data)
        return AuditRecord(receipt.index, receipt.leaf_hash_hex)

    def record_many(self, records: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[AuditRecord]:
        """``record`` for several ``(actor, action, data)`` at once, behind one fsync (group commit; all or none)."""
        receipts = self.log.append_many([
            {"actor": actor, "action": action, "details": data,
             "round_id": data.get("round_id") if isinstance(data.get("round_id"), str) else None,
             "task_id": data.get("task_id") if isinstance(data.get("task_id"), str) else None}
            for actor, action, data in records])
        return [AuditRecord(r.index, r.leaf_hash_hex) for r in receipts]

    def logged_decryptions(self, action: str = "decrypt.agent") -> int:
        """Ciphertexts this server's log says were decrypted (sum of ``chunks``), across every restart.

        Why from the log: the key owner counts only since the process started, and a custody
        report that falls back to 0 after a restart understates what was ever released.
        """
        total = 0
        with (self.log.directory / "entries.jsonl").open("r", encoding="utf-8") as lines:
            for line in lines:
                entry = json.loads(line).get("entry", {}) if line.strip() else {}
                if entry.get("action") == action:
                    chunks = (entry.get("details") or {}).get("chunks")
                    total += chunks if isinstance(chunks, int) else 0
        return total

    def head(self) -> Checkpoint:
        """A signed checkpoint covering every entry so far (the last one if it still does, else a new one)."""
        last = self.log.last_checkpoint
        if last is not None and last.size == self.log.size:
            return last
        return self.log.checkpoint()

    def checkpoint(self) -> dict[str, Any]:
        return checkpoint_to_wire(self.head())

    def proof(self, index: int) -> dict[str, Any]:
        """Inclusion proof of entry ``index`` in the tree of the signed head it comes with."""
        head = self.head()
        if index >= head.size:  # appended after the head was read: sign one that covers it
            head = self.log.checkpoint()
        proof = self.log.inclusion_proof(index, head.size)
        return inclusion_to_wire(proof, head)

    def size(self) -> int:
        return self.log.size

    def entry_lines(self, start: int, limit: int) -> tuple[list[str], int]:
        """Entries from ``start``, never past the log's size as read first (a line is written before it counts)."""
        size = self.log.size
        return self._entries.read(start, limit, stop=size), size

    def checkpoint_lines(self, start: int, limit: int) -> tuple[list[str], int]:
        total = self._checkpoints.count()
        return self._checkpoints.read(start, limit, stop=total), total

    def consistency(self, old_size: int, new_size: int) -> list[str]:
        return list(self.log.consistency_proof(old_size, new_size).path)

    def public_key_pem(self) -> bytes:
        return (self.log.directory / PUBLIC_KEY).read_bytes()

    def close(self) -> None:
        """Final signed checkpoint, then release the directory (idempotent)."""
        self.log.close()
