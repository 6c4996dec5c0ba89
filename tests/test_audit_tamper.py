"""Every kind of tampering is caught and named (file, line, entry index), by the API and by `mor audit`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from audit import AuditLog, verify_log
from audit.records import sign_checkpoint
from crypto.canonical import canonical_json
from crypto.signing import SigningKey
from mor_cli.main import main

ORIGIN = "mor://test/server"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def log_dir(tmp_path: Path, key: SigningKey) -> Path:
    """Ten entries, checkpoints at sizes 4, 8 (every 4) and 10 (close)."""
    ticks = itertools.count()
    with AuditLog.open(tmp_path / "log", signing_key=key, origin=ORIGIN, checkpoint_every=4,
                       now=lambda: 1_800_000_000.0 + next(ticks)) as log:
        for i in range(10):
            log.append(actor=f"agent-{i % 2}", action="submission.accepted", round_id="r1",
                       digests={"envelope_sha256": f"{i:064x}"}, details={"length": 16})
    key.verify_key().save(tmp_path / "auditor.pem")
    return tmp_path / "log"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _first(log_dir: Path, key: SigningKey) -> tuple[str, int | None, int | None, str]:
    report = verify_log(log_dir, key.verify_key())
    assert not report.ok and report.first_problem is not None
    p = report.first_problem
    return p.file, p.line, p.index, p.reason


def test_untouched_log_verifies_and_cli_prints_the_summary(log_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["audit", "verify", str(log_dir), "--public-key", str(log_dir.parent / "auditor.pem"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "entries      10" in out and "checkpoints  3" in out and "2027-01-15T08:00:00Z" in out
    assert "agent-0: submission.accepted=5" in out and "OK:" in out


@pytest.mark.parametrize("offset", [2, 20, 60, 140, -40, -3])
def test_a_flipped_byte_names_its_entry(log_dir: Path, key: SigningKey, offset: int) -> None:
    path = log_dir / "entries.jsonl"
    lines = _lines(path)
    line = bytearray(lines[5])
    line[offset - 1 if offset < 0 else offset] ^= 0x01
    lines[5] = bytes(line)
    path.write_bytes(b"".join(lines))
    assert _first(log_dir, key)[:3] == ("entries.jsonl", 6, 5)


def test_a_deleted_entry_is_named(log_dir: Path, key: SigningKey) -> None:
    path = log_dir / "entries.jsonl"
    lines = _lines(path)
    del lines[5]
    path.write_bytes(b"".join(lines))
    file, line, index, reason = _first(log_dir, key)
    assert (file, line, index) == ("entries.jsonl", 6, 5) and "holds index 6 where 5 belongs" in reason


def test_reordered_entries_are_named(log_dir: Path, key: SigningKey) -> None:
    path = log_dir / "entries.jsonl"
    lines = _lines(path)
    lines[5], lines[6] = lines[6], lines[5]
    path.write_bytes(b"".join(lines))
    assert _first(log_dir, key)[:3] == ("entries.jsonl", 6, 5)


def test_an_inserted_copy_and_an_inserted_forgery_are_named(log_dir: Path, key: SigningKey) -> None:
    path = log_dir / "entries.jsonl"
    original = _lines(path)
    path.write_bytes(b"".join([*original[:6], original[2], *original[6:]]))  # replay of an old line
    assert _first(log_dir, key)[:3] == ("entries.jsonl", 7, 6)
    forged = json.loads(original[6])
    forged["sig"] = SigningKey.generate().sign(b"whatever").hex()
    path.write_bytes(b"".join([*original[:6], canonical_json(forged) + b"\n", *original[7:]]))
    file, line, index, reason = _first(log_dir, key)
    assert (file, line, index) == ("entries.jsonl", 7, 6) and "signature" in reason


def test_a_line_cut_short_in_the_middle_is_named(log_dir: Path, key: SigningKey) -> None:
    path = log_dir / "entries.jsonl"
    lines = _lines(path)
    lines[3] = lines[3][:50] + b"\n"
    path.write_bytes(b"".join(lines))
    assert _first(log_dir, key)[:3] == ("entries.jsonl", 4, 3)


def test_truncating_the_file_before_the_last_checkpoint_is_caught(log_dir: Path, key: SigningKey) -> None:
    path = log_dir / "entries.jsonl"
    path.write_bytes(b"".join(_lines(path)[:7]))
    file, line, index, reason = _first(log_dir, key)
    assert (file, line, index) == ("checkpoints.jsonl", 2, 7)
    assert "entries.jsonl line 8" in reason and "truncated" in reason


def test_a_forked_checkpoint_signed_with_the_right_key_is_caught(log_dir: Path, key: SigningKey) -> None:
    path = log_dir / "checkpoints.jsonl"
    lines = _lines(path)
    body = json.loads(lines[1])["checkpoint"]
    fork = sign_checkpoint(key, origin=ORIGIN, size=body["size"], root="00" * 32, time=body["time"])
    lines[1] = canonical_json(fork.to_dict()) + b"\n"
    path.write_bytes(b"".join(lines))
    file, line, _, reason = _first(log_dir, key)
    assert (file, line) == ("checkpoints.jsonl", 2) and "forked" in reason


def test_history_rewritten_by_the_key_holder_is_caught_by_the_checkpoints(log_dir: Path, key: SigningKey) -> None:
    """Re-signing an edited entry defeats its own signature, not the checkpoint already handed out."""
    from audit.records import entry_line

    path = log_dir / "entries.jsonl"
    lines = _lines(path)
    entry = json.loads(lines[5])["entry"]
    entry["outcome"] = "refused"
    lines[5] = entry_line(entry, key)[0] + b"\n"
    path.write_bytes(b"".join(lines))
    file, line, index, reason = _first(log_dir, key)
    assert (file, line, index) == ("checkpoints.jsonl", 2, 4) and "4..7" in reason


def test_checkpoints_under_another_key_and_a_swapped_key_file_are_refused(log_dir: Path, key: SigningKey) -> None:
    other = SigningKey.generate()
    assert _first(log_dir, other)[0] == "log_public_key.pem"  # the auditor's key is not the log's
    path = log_dir / "checkpoints.jsonl"
    body = json.loads(_lines(path)[0])["checkpoint"]
    foreign = sign_checkpoint(other, origin=ORIGIN, size=body["size"], root=body["root"], time=body["time"])
    path.write_bytes(canonical_json(foreign.to_dict()) + b"\n" + b"".join(_lines(path)[1:]))
    file, line, _, reason = _first(log_dir, key)
    assert (file, line) == ("checkpoints.jsonl", 1) and "signature" in reason


def test_cli_names_the_first_bad_entry_and_exits_1(log_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = log_dir / "entries.jsonl"
    lines = _lines(path)
    del lines[2]
    path.write_bytes(b"".join(lines))
    code = main(["audit", "verify", str(log_dir), "--public-key", str(log_dir.parent / "auditor.pem"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("FAILED: entries.jsonl line 3 (entry index 2): holds index 3 where 2 belongs")


def test_cli_usage_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["audit", "verify", str(tmp_path), "--public-key", str(tmp_path / "none.pem")]) == 2
    assert "not an audit log" in capsys.readouterr().err
    (tmp_path / "entries.jsonl").write_text("")
    assert main(["audit", "verify", str(tmp_path), "--public-key", str(tmp_path / "none.pem")]) == 2
    assert "none.pem: cannot read public key" in capsys.readouterr().err


def test_cli_show_filters_and_prints_json(log_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["audit", "show", str(log_dir), "--actor", "agent-1", "--round", "r1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[0].startswith("#1  2027-01-15T08:00:01Z  agent-1  submission.accepted  ok")
    assert main(["audit", "show", str(log_dir), "--action", "submission.accepted", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == list(range(10))
    assert main(["audit", "show", str(log_dir), "--action", "nothing.like.this"]) == 0
    assert capsys.readouterr().out == ""
