"""``mor audit show`` and ``mor audit fetch`` read lines nobody verified yet: a tampered one is never a traceback.

``show`` prints a log's lines as they stand (trust comes from ``verify``); ``fetch`` looks for the
served head among the checkpoint lines a server sent. Before, a line nested too deep for
``json`` (RecursionError), a time past year 9999, ``digests`` that are not an object, or a
checkpoint that is not an object (AttributeError) stopped either command with a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit import AuditLog
from crypto.signing import SigningKey
from mor_cli.audit_fetch import _head_line
from mor_cli.main import main as mor

DEEP = "[" * 100_000 + "]" * 100_000


def test_show_prints_a_tampered_log_line_by_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with AuditLog.open(tmp_path / "audit", signing_key=SigningKey.generate(), origin="mor://t/server") as log:
        log.append(actor="server", action="server.started", details={})
    odd = {"v": 1, "index": 1, "time": 1e20, "actor": "x", "action": "y", "digests": ["not", "an", "object"]}
    with (tmp_path / "audit" / "entries.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(DEEP + "\n" + json.dumps({"entry": odd}) + "\n")

    assert mor(["audit", "show", str(tmp_path / "audit")]) == 0
    out, err = capsys.readouterr()
    assert "server.started" in out and "1e+20" in out and "line 2: unreadable" in err and "Traceback" not in err


def test_fetch_skips_checkpoint_lines_it_cannot_read() -> None:
    head = {"size": 3, "root_sha256": "ab" * 32}
    lines = [DEEP, json.dumps({"checkpoint": ["a list"]}), json.dumps({"checkpoint": {"size": 3, "root": "ab" * 32}})]
    assert _head_line(lines, head) == 2
