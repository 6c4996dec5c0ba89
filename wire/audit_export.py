"""What the auditor-only routes answer (``auditor`` certificates only; members get 403 ``auditor_only``).

Endpoints (under ``/v1``)::

    GET  /v1/audit/entries?start=I&limit=N       -> AuditLinesPage   (entries.jsonl lines, exact bytes)
    GET  /v1/audit/checkpoints?start=I&limit=N   -> AuditLinesPage   (checkpoints.jsonl lines, exact bytes)
    GET  /v1/audit/consistency?old=M&new=N       -> ConsistencyProofBody
    GET  /v1/audit/public-key                    (PEM: the log's log_public_key.pem, a convenience copy)
    GET  /v1/privacy-reports?start=I&limit=N     -> PrivacyReportsPage
    GET  /v1/digests                             -> DigestsBody

Why lines travel as strings rather than parsed objects: the verifier (:mod:`audit.verify`)
requires every line to be byte-for-byte its canonical JSON, so a copy written from the
strings is the server's log exactly — nothing is re-encoded on the way, and any byte the
server changed is caught by ``mor audit verify`` on the copy. Pages are bounded in lines and
bytes; ``next`` is where the following page starts (``None`` at the end of what was asked).
"""

from __future__ import annotations

from typing import Any

from wire.messages import PrivacyMode, WireModel


class AuditLinesPage(WireModel):
    """Complete lines of one log file, from line ``start`` (0-based; entry ``i`` is line ``i``)."""

    start: int
    lines: list[str]
    total: int  # lines in the file (entries: the log's size) when the page was read
    next: int | None


class ConsistencyProofBody(WireModel):
    """RFC 9162 consistency proof: the tree of ``old_size`` is a prefix of the tree of ``new_size``."""

    old_size: int
    new_size: int
    path_sha256: list[str]


class MemberPrivacyReport(WireModel):
    """One member's enrolment as stored: the signed report, and the key its signature verifies with."""

    agent: str
    architecture: str
    epsilon: float
    delta: float
    enrolled_at: float
    signing_public_key_b64: str
    privacy_report: dict[str, Any]


class PrivacyReportsPage(WireModel):
    start: int
    reports: list[MemberPrivacyReport]
    total: int
    next: int | None


class DatasetDigest(WireModel):
    role: str
    source: str
    count: int
    sha256: str
    loaded_at: float


class DigestsBody(WireModel):
    """The digests in force: what an auditor compares with the policy file and the datasets it was shown."""

    consortium: str
    privacy_mode: PrivacyMode
    policy_digest: str
    context_sha256: str | None
    router_digest: str | None
    datasets: list[DatasetDigest]
