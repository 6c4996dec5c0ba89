"""The auditor's read-only routes: the whole audit log, consistency proofs, every member's report, digests.

Who may read what (``docs/architecture.md``, "Who reads what"): these routes answer only
``auditor`` certificates (403 ``auditor_only`` otherwise, audited as ``reject.auditor_only``).
A member keeps what it needs to check its own receipts — the signed head
(``/v1/audit/checkpoint``) and inclusion proofs (``/v1/audit/proof/{i}``) — but not the
log's content: entries name every member's actions, refusals and privacy figures, and a
member's signed privacy report is that member's business and the auditor's, not its peers'.
An auditor, for its part, can do nothing a member does: enrol, poll, submit and calibrate
stay ``client``-only (``wrong_role``). Every page of the log's entries or checkpoints and of the
members' privacy reports that an auditor reads is recorded as ``audit.read`` (who, what, which
range): access to the audit trail is itself audited.

Range parameters are parsed strictly (decimal digits only: no sign, no leading zero, no
``1.0``, no ``1_000``) so a page boundary always means one thing; pages are bounded in lines
and bytes (:mod:`server.audit_export`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from server.admission import Caller
from server.audit_export import MAX_PAGE_LINES, AuditExport
from server.rejections import Rejection
from server.routes.common import auditor_caller, services_of
from wire.audit_export import (
    AuditLinesPage,
    ConsistencyProofBody,
    DatasetDigest,
    DigestsBody,
    MemberPrivacyReport,
    PrivacyReportsPage,
)

router = APIRouter(prefix="/v1", tags=["auditor"])
Auditor = Annotated[Caller, Depends(auditor_caller)]
INDEX = r"^(0|[1-9][0-9]{0,15})$"  # a log index or size: plain decimal, below 10**16
MAX_REPORTS_PAGE = 100


def _index(description: str) -> Any:
    return Query(pattern=INDEX, max_length=16, description=description)


Start = Annotated[str, _index("first line (0-based; entry i is line i)")]
Limit = Annotated[str | None, _index(f"at most this many lines (1..{MAX_PAGE_LINES})")]


def _limit(raw: str | None, most: int) -> int:
    value = most if raw is None else int(raw)
    if not 1 <= value <= most:
        raise Rejection(422, "bad_range", f"query.limit: {value} is outside 1..{most}")
    return value


def _export(request: Request) -> AuditExport:
    audit = services_of(request).audit
    if not isinstance(audit, AuditExport):  # a test double: say so rather than serve a partial log
        raise Rejection(501, "audit_export_unavailable", "this server's audit trail cannot be exported")
    return audit


def _record_read(request: Request, caller: Caller, what: str, start: int, returned: int, total: int) -> None:
    """Reading the audit trail or members' privacy reports is itself recorded (PCI DSS 10.2.1.3, HIPAA 164.312(b)).

    After the page is read, so the entry is not in the page it describes; the copy an auditor
    fetches up to a signed head simply ends before its own reads.
    """
    services_of(request).audit.record(caller.identity, "audit.read", {
        "what": what, "start": start, "returned": returned, "total": total})


def _lines(start_raw: str, limit_raw: str | None, request: Request, caller: Caller, *,
           checkpoints: bool) -> AuditLinesPage:
    start, limit = int(start_raw), _limit(limit_raw, MAX_PAGE_LINES)
    export = _export(request)
    lines, total = (export.checkpoint_lines if checkpoints else export.entry_lines)(start, limit)
    what = "checkpoints" if checkpoints else "entries"
    if start > total:
        raise Rejection(404, "beyond_log", f"query.start: {start} is beyond the log's {total} {what}")
    following = start + len(lines)
    _record_read(request, caller, what, start, len(lines), total)
    return AuditLinesPage(start=start, lines=lines, total=total, next=following if following < total else None)


@router.get("/audit/entries", response_model=AuditLinesPage, summary="Audit log entries (auditors only)")
def entries(request: Request, caller: Auditor, start: Start = "0", limit: Limit = None) -> AuditLinesPage:
    """``entries.jsonl`` lines ``start``.. exactly as stored; write them one per line to get the file back."""
    return _lines(start, limit, request, caller, checkpoints=False)


@router.get("/audit/checkpoints", response_model=AuditLinesPage, summary="Signed checkpoints (auditors only)")
def checkpoints(request: Request, caller: Auditor, start: Start = "0", limit: Limit = None) -> AuditLinesPage:
    """``checkpoints.jsonl`` lines exactly as stored (``GET /v1/audit/checkpoint`` first signs a fresh head)."""
    return _lines(start, limit, request, caller, checkpoints=True)


@router.get("/audit/consistency", response_model=ConsistencyProofBody,
            summary="Consistency proof between two log sizes (auditors only)")
def consistency(request: Request, _caller: Auditor,
                old: Annotated[str, _index("the earlier tree size")],
                new: Annotated[str, _index("the later tree size")]) -> ConsistencyProofBody:
    old_size, new_size = int(old), int(new)
    export = _export(request)
    size = export.size()
    if old_size > new_size:
        raise Rejection(422, "bad_range", f"query.old: {old_size} is larger than query.new {new_size}")
    if new_size > size:
        raise Rejection(404, "beyond_log", f"query.new: {new_size} is beyond the log's {size} entries")
    return ConsistencyProofBody(old_size=old_size, new_size=new_size,
                                path_sha256=export.consistency(old_size, new_size))


@router.get("/audit/public-key", response_class=Response, summary="The log's public key, PEM (auditors only)",
            responses={200: {"content": {"application/x-pem-file": {}}}})
def public_key(request: Request, _caller: Auditor) -> Response:
    """A convenience copy for ``mor audit fetch``: trust comes from the key obtained out of band."""
    return Response(_export(request).public_key_pem(), media_type="application/x-pem-file")


@router.get("/privacy-reports", response_model=PrivacyReportsPage,
            summary="Every member's signed privacy report (auditors only)")
def privacy_reports(request: Request, caller: Auditor,
                    start: Annotated[str, _index("first member (in identity order)")] = "0",
                    limit: Annotated[str | None, _index(f"at most this many (1..{MAX_REPORTS_PAGE})")] = None,
                    ) -> PrivacyReportsPage:
    """Each report verifies with the key next to it (the one the member enrolled with)."""
    first, most = int(start), _limit(limit, MAX_REPORTS_PAGE)
    rows = services_of(request).state.list_agents()
    if first > len(rows):
        raise Rejection(404, "beyond_list", f"query.start: {first} is beyond the {len(rows)} enrolled members")
    page = [MemberPrivacyReport(agent=r["identity"], architecture=r["architecture"], epsilon=r["epsilon"],
                                delta=r["delta"], enrolled_at=r["enrolled_at"],
                                signing_public_key_b64=r["signing_key_b64"],
                                privacy_report=json.loads(r["privacy_report"] or "{}"))
            for r in rows[first:first + most]]
    following = first + len(page)
    _record_read(request, caller, "privacy-reports", first, len(page), len(rows))
    return PrivacyReportsPage(start=first, reports=page, total=len(rows),
                              next=following if following < len(rows) else None)


@router.get("/digests", response_model=DigestsBody, summary="Digests in force (auditors only)")
def digests(request: Request, _caller: Auditor) -> DigestsBody:
    services = services_of(request)
    policy, context = services.policy, services.privacy.public_context
    router_row = services.state.current_router_weights()
    return DigestsBody(
        consortium=policy.consortium, privacy_mode=policy.privacy_mode, policy_digest=policy.digest,
        context_sha256=context.sha256 if context else None,
        router_digest=router_row["digest"] if router_row else None,
        datasets=[DatasetDigest(role=d["role"], source=d["source"], count=d["count"], sha256=d["sha256"],
                                loaded_at=d["loaded_at"]) for d in services.state.list_datasets()])
