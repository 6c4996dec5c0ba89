"""The server's ``AuditTrail`` contract kept in a list, for unit tests of code that only records.

Why not the real log here: these tests assert *which* entries the fusion writes; the log's own
tamper evidence is covered by ``tests/test_audit_*`` and every process test uses the real one.
"""

from __future__ import annotations

import hashlib
from typing import Any

from crypto.canonical import canonical_json
from server.services import AuditRecord


class MemoryAudit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, actor: str, action: str, data: Any) -> AuditRecord:
        self.entries.append((actor, action, dict(data)))
        return AuditRecord(len(self.entries) - 1, hashlib.sha256(canonical_json([actor, action])).hexdigest())

    def checkpoint(self) -> dict[str, Any]:
        return {}

    def proof(self, index: int) -> dict[str, Any]:
        return {}

    def size(self) -> int:
        return len(self.entries)

    def actions(self) -> list[str]:
        return [a for _, a, _ in self.entries]
