"""``mor audit report`` on a hostile member's own log: a clean report, never a traceback.

A member signs its own log with its own key, so every value in it is the member's choice: a
clock past year 9999, a ``noise_source`` that is not text, a ``receipt.stored`` whose receipt is
a list or whose task id is an object, markup in any string. The report must still be written
(the receipt counted as failing, the strings escaped), so an auditor gets a verdict instead of
an exception. Real logs written with :class:`audit.AuditLog`; no server process is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit import AuditLog
from audit.report import LogInput, build_report, render_report
from audit.storage import PUBLIC_KEY
from crypto.signing import SigningKey, VerifyKey

EVE = "mor://c/client/eve"


def _log(directory: Path, origin: str, entries: list[tuple[str, dict[str, Any]]],
         now: Callable[[], float] = lambda: 1_700_000_000.0) -> LogInput:
    with AuditLog.open(directory, signing_key=SigningKey.generate(), origin=origin, now=now) as log:
        for action, details in entries:
            log.append(actor=origin if origin != "mor://c/server" else EVE, action=action, details=details)
    return LogInput("agent" if origin == EVE else "server", directory)


def test_a_hostile_member_log_gives_a_report_not_a_traceback(tmp_path: Path) -> None:
    server = _log(tmp_path / "server", "mor://c/server", [("agent.enrolled", {"epsilon": 3.0})])
    eve = _log(tmp_path / "eve", EVE, [
        ("model.trained", {"noise_source": 5, "epsilon": 1.0}),
        ("receipt.stored", {"receipt": [1, 2]}),
        ("receipt.stored", {"receipt": {"task_id": {"nested": 1}}}),
        ("task.refused", {"code": "<script>alert(1)</script>"}),
    ], now=lambda: 1e20)  # year ~3e12: datetime cannot represent it

    report = build_report(server, [eve], now=1_700_000_000.0)
    page = render_report(report)

    assert report["receipts"]["checked"] == 2 and report["receipts"]["failed"] == 2
    assert not report["verdict"]["ok"]
    assert "1e+20 (not a date)" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    eve_row = next(m for m in report["members"] if m["identity"] == EVE)
    assert eve_row["noise_sources"] == ["5"] and eve_row["unreceipted"] == 0


def test_a_line_nested_too_deep_for_json_is_a_verification_failure(tmp_path: Path) -> None:
    """A line of 100k nested brackets made ``json.loads`` raise RecursionError: a traceback from verify and report."""
    from audit import verify_log

    server = _log(tmp_path / "server", "mor://c/server", [("agent.enrolled", {"epsilon": 3.0})])
    for name in ("entries.jsonl", "checkpoints.jsonl"):
        eve = _log(tmp_path / name, EVE, [("model.trained", {"noise_source": "csprng"})])
        with (eve.directory / name).open("ab") as handle:
            handle.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
        report = build_report(server, [eve], now=1_700_000_000.0)
        render_report(report)
        assert not report["verdict"]["ok"] and "fails verification" in report["verdict"]["failures"][0], name
        verified = verify_log(eve.directory, VerifyKey.load(eve.directory / PUBLIC_KEY))
        assert not verified.ok and verified.entries >= 1  # the good prefix still verifies; the bad line does not
