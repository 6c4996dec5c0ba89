""""Any change is detected": every byte of a log counts, and entries no checkpoint covers fail.

What an auditor relies on: a log that verifies is exactly the log the writer signed — not a
copy with its checkpoints file emptied, its tail cut, or a signature's hex case changed; and an
agent's log is sealed every ``checkpoint_every`` entries, so a cut anywhere but exactly at a
checkpoint shows (a cut at a checkpoint needs the other side's receipts, see audit.verify).
Real logs, real Ed25519 keys, the real verifier and the ``mor audit verify`` command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.consortium import write_policy

from audit import AuditLog, verify_log
from client_agent.agent import open_agent_audit
from crypto.signing import SigningKey
from mor_cli.main import main
from policies import load_policy

ORIGIN = "mor://testnet/client/alice"
FILES = ("entries.jsonl", "checkpoints.jsonl", "log_public_key.pem")


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def _log(directory: Path, key: SigningKey, entries: int, *, every: int = 64, close: bool = True) -> Path:
    log = AuditLog.open(directory, signing_key=key, origin=ORIGIN, checkpoint_every=every)
    for i in range(entries):
        log.append(actor=ORIGIN, action="receipt.stored", task_id=f"t{i}", details={"i": i})
    if close:
        log.close()
    else:  # a writer that is still running (or was killed): what it wrote stays, unsealed
        log._lock.release()
    return directory


def _keep_lines(path: Path, n: int) -> None:
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:n]))


def test_a_log_without_checkpoints_fails_unless_the_tail_is_explicitly_allowed(tmp_path: Path, key: SigningKey,
                                                                             capsys: pytest.CaptureFixture[str]
                                                                             ) -> None:
    log_dir = _log(tmp_path / "log", key, 5)
    assert verify_log(log_dir, key.verify_key()).ok
    for emptied in ("empty", "missing"):
        if emptied == "empty":
            (log_dir / "checkpoints.jsonl").write_bytes(b"")
        else:
            (log_dir / "checkpoints.jsonl").unlink()
        report = verify_log(log_dir, key.verify_key())
        assert not report.ok and report.uncovered == 5
        assert report.first_problem is not None and report.first_problem.kind == "unsealed"
        assert "entries 0..4" in report.first_problem.reason and "missing or empty" in report.first_problem.reason
        assert verify_log(log_dir, key.verify_key(), allow_unsealed_tail=True).ok
    pem = tmp_path / "key.pem"
    key.verify_key().save(pem)
    assert main(["audit", "verify", str(log_dir), "--public-key", str(pem), "--quiet"]) == 1
    assert "covered by no signed checkpoint" in capsys.readouterr().err
    assert main(["audit", "verify", str(log_dir), "--public-key", str(pem), "--quiet", "--allow-unsealed-tail"]) == 0
    assert "accepted as asked" in capsys.readouterr().out


def test_a_tail_cut_back_past_the_last_checkpoint_fails(tmp_path: Path, key: SigningKey) -> None:
    log_dir = _log(tmp_path / "log", key, 10, every=4)  # checkpoints at 4, 8 and (close) 10
    _keep_lines(log_dir / "entries.jsonl", 9)
    _keep_lines(log_dir / "checkpoints.jsonl", 2)  # the cutter drops the checkpoint that named 10
    report = verify_log(log_dir, key.verify_key())
    assert not report.ok and report.uncovered == 1 and report.first_problem is not None
    assert report.first_problem.index == 8


def test_a_running_log_verifies_only_with_allow_unsealed_tail(tmp_path: Path, key: SigningKey) -> None:
    log_dir = _log(tmp_path / "log", key, 6, every=4, close=False)
    assert not verify_log(log_dir, key.verify_key()).ok
    report = verify_log(log_dir, key.verify_key(), allow_unsealed_tail=True)
    assert report.ok and report.checkpoints == 1 and report.uncovered == 2


def test_every_single_byte_changed_anywhere_in_a_log_fails_verification(tmp_path: Path, key: SigningKey) -> None:
    log_dir = _log(tmp_path / "log", key, 2, every=1)  # two entries, two checkpoints
    assert verify_log(log_dir, key.verify_key()).ok
    undetected = []
    for name in FILES:
        path = log_dir / name
        data = path.read_bytes()
        for position, byte in enumerate(data):
            # 0x01 changes every byte; 0x20 changes a letter's case (hex "a" -> "A", which used to pass)
            for mask in (0x01, 0x20) if chr(byte).isalpha() else (0x01,):
                changed = bytearray(data)
                changed[position] ^= mask
                path.write_bytes(bytes(changed))
                if verify_log(log_dir, key.verify_key()).ok:
                    undetected.append(f"{name}[{position}] {chr(byte)!r} ^ {mask:#x}")
        path.write_bytes(data)
    assert undetected == []


def test_the_agent_log_signs_checkpoints_at_the_policy_interval(tmp_path: Path, key: SigningKey) -> None:
    policy = load_policy(write_policy(tmp_path / "policy.toml"))  # [audit] checkpoint_every = 16
    assert policy.audit.checkpoint_every == 16
    log = open_agent_audit(tmp_path / "agent", key, origin=ORIGIN, policy=policy)
    for i in range(40):
        log.append(actor=ORIGIN, action="receipt.stored", details={"i": i})
    report = verify_log(tmp_path / "agent", key.verify_key(), allow_unsealed_tail=True)
    assert (report.checkpoints, report.uncovered) == (2, 8)  # at 16 and 32, not only at shutdown
    log.close()
    cut = tmp_path / "agent"  # cut back to 20 entries, dropping the checkpoints that name more
    _keep_lines(cut / "entries.jsonl", 20)
    _keep_lines(cut / "checkpoints.jsonl", 1)
    assert not verify_log(cut, key.verify_key()).ok  # 16..19 are sealed by nothing: the cut shows
