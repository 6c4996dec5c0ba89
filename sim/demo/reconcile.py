"""The demo's end-of-run audit check, on :mod:`audit.reconcile` (shared with ``mor audit report``).

Every log is verified and every agent receipt found in the server's log by
:func:`audit.reconcile.reconcile`; here only the error changes tree: a log that cannot be read
at all is a :class:`sim.errors.ReconcileError` of the demo, failed checks stay results.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.reconcile import SERVER_ACTION, LogCheck, ReceiptCheck, Reconciliation
from audit.reconcile import reconcile as _reconcile
from sim.errors import ReconcileError

__all__ = ["SERVER_ACTION", "LogCheck", "ReceiptCheck", "Reconciliation", "reconcile"]


def reconcile(server_log: Path, server_key: Any, agent_logs: Mapping[str, tuple[Path, Any]],
              extra_logs: Mapping[str, tuple[Path, Any]] | None = None) -> Reconciliation:
    """:func:`audit.reconcile.reconcile`, raising :class:`ReconcileError` for an unreadable log."""
    try:
        return _reconcile(server_log, server_key, agent_logs, extra_logs)
    except AuditError as exc:
        raise ReconcileError(str(exc)) from None
