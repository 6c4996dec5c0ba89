"""AuditLog: receipts and proofs against signed checkpoints, durability, restart, locking, input guards."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import audit
from audit import (
    AuditConfigError,
    AuditLog,
    EntryRejectedError,
    LogClosedError,
    LogCorruptError,
    LogLockedError,
    verify_consistency,
    verify_inclusion,
    verify_log,
)
from crypto.signing import SigningKey

ORIGIN = "mor://test/server"
REPO = Path(__file__).resolve().parents[1]


def clock(start: float = 1_800_000_000.0) -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: start + next(ticks)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def _fill(log: AuditLog, n: int, actor: str = "agent-a") -> list:
    return [log.append(actor=actor, action="submission.accepted", round_id=f"r{i % 3}", task_id=f"t{i}",
                       digests={"envelope_sha256": f"{i:064x}"}, details={"length": i}) for i in range(n)]


def test_public_names_exist() -> None:
    assert all(hasattr(audit, name) for name in audit.__all__)


def test_receipt_inclusion_proof_checks_against_the_signed_checkpoint(tmp_path: Path, key: SigningKey) -> None:
    with AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN, checkpoint_every=4, now=clock()) as log:
        receipts = _fill(log, 11)
        cp = log.checkpoint()
        for receipt in receipts:
            proof = log.inclusion_proof(receipt.index, cp.size)
            assert proof.leaf_hash == receipt.leaf_hash_hex
            # what an agent does with its receipt: no log access, only the proof and a signed checkpoint
            verify_inclusion(receipt.leaf_hash_hex, receipt.index, cp.size, proof.path, cp.root)
            key.verify_key().verify(bytes.fromhex(cp.signature), cp.signed_bytes())
        early = receipts[3]
        assert early.tree_size == 4
        consistency = log.consistency_proof(early.tree_size, cp.size)
        verify_consistency(4, cp.size, log.root(4), cp.root, consistency.path)
        with pytest.raises(audit.InvalidProofError):
            verify_inclusion(receipts[0].leaf_hash_hex, 1, cp.size, log.inclusion_proof(0).path, cp.root)
        with pytest.raises(audit.ProofError):
            log.inclusion_proof(11, 11)
    lines = (tmp_path / "checkpoints.jsonl").read_text().splitlines()
    assert [json.loads(x)["checkpoint"]["size"] for x in lines] == [4, 8, 11]  # every 4, explicit; close adds none


def test_entries_hold_digests_and_fields_and_files_are_private(tmp_path: Path, key: SigningKey) -> None:
    with AuditLog.open(tmp_path / "log", signing_key=key, origin=ORIGIN, now=clock()) as log:
        log.append(actor="CN=hospital-1", action="agent.enrolled", outcome="ok", round_id="r1", task_id="t1",
                   digests={"report": "sha256:" + "ab" * 32}, details={"epsilon": 3.0, "nested": {"k": [1, 2]}})
    entry = json.loads((tmp_path / "log" / "entries.jsonl").read_text())["entry"]
    assert entry["actor"] == "CN=hospital-1" and entry["action"] == "agent.enrolled"
    assert entry["round_id"] == "r1" and entry["task_id"] == "t1" and entry["log"] == ORIGIN
    assert entry["digests"] == {"report": "sha256:" + "ab" * 32}
    assert entry["time"] == 1_800_000_000.0
    assert (tmp_path / "log").stat().st_mode & 0o777 == 0o700
    assert verify_log(tmp_path / "log", key.verify_key()).ok


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"details": {"scores": [0.1, 0.2, 0.3, 0.4, 0.5]}}, "raw scores"),
    ({"details": {"deep": {"x": [[0.1] * 9]}}}, "raw scores"),
    ({"details": {"blob": b"raw"}}, "not JSON"),
    ({"details": {1: "x"}}, "not a string"),
    ({"digests": {"payload": "not a digest"}}, "hex digest"),
    ({"digests": {"payload": "AB" * 32}}, "hex digest"),
    ({"action": "Drop Table"}, "action"),
    ({"actor": ""}, "actor"),
    ({"actor": "a\nb"}, "control"),
    ({"details": {"big": "x" * 70_000}}, "limit"),
])
def test_refused_input_writes_nothing(tmp_path: Path, key: SigningKey, kwargs: dict, message: str) -> None:
    with AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN, now=clock()) as log:
        log.append(actor="a", action="first")
        before = (tmp_path / "entries.jsonl").read_bytes()
        args = {"actor": "agent", "action": "x.y", **kwargs}
        with pytest.raises(EntryRejectedError, match=message):
            log.append(**args)
        assert log.size == 1 and (tmp_path / "entries.jsonl").read_bytes() == before


def test_allowed_details_short_float_lists_int_lists_and_nan(tmp_path: Path, key: SigningKey) -> None:
    with AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN, now=clock()) as log:
        log.append(actor="a", action="grpo.step", details={"w": [0.5, 0.25, 0.25, 0.0], "ids": list(range(50)),
                                                           "kl": float("nan"), "tuple": (1, "x")})
    details = json.loads((tmp_path / "entries.jsonl").read_text())["entry"]["details"]
    assert details["kl"] == "nan" and details["tuple"] == [1, "x"] and len(details["ids"]) == 50


def test_times_never_go_back_even_when_the_clock_does(tmp_path: Path, key: SigningKey) -> None:
    times = iter([100.0, 50.0, 200.0, 10.0, 10.0])
    with AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN, now=lambda: next(times)) as log:
        for _ in range(3):
            log.append(actor="a", action="tick")
    got = [json.loads(x)["entry"]["time"] for x in (tmp_path / "entries.jsonl").read_text().splitlines()]
    assert got == [100.0, 100.0, 200.0]
    assert verify_log(tmp_path, key.verify_key()).ok


def test_restart_continues_the_same_tree(tmp_path: Path, key: SigningKey) -> None:
    with AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN, checkpoint_every=64, now=clock()) as log:
        _fill(log, 5)
    first = json.loads((tmp_path / "checkpoints.jsonl").read_text().splitlines()[-1])["checkpoint"]
    with AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN, now=clock(1_900_000_000.0)) as log:
        assert log.size == 5 and log.root(5) == first["root"]
        receipts = _fill(log, 4)
        assert [r.index for r in receipts] == [5, 6, 7, 8]
        verify_consistency(5, 9, first["root"], log.root(), log.consistency_proof(5).path)
    report = verify_log(tmp_path, key.verify_key())
    assert report.ok and report.entries == 9 and report.checkpoints == 2 and report.uncovered == 0
    with pytest.raises(LogClosedError):
        log.append(actor="a", action="late")


def test_reopen_refuses_another_key_another_origin_and_a_tampered_log(tmp_path: Path, key: SigningKey) -> None:
    with AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN, now=clock()) as log:
        _fill(log, 3)
    with pytest.raises(AuditConfigError, match="one log, one key"):
        AuditLog.open(tmp_path, signing_key=SigningKey.generate(), origin=ORIGIN)
    with pytest.raises(AuditConfigError, match="origin"):
        AuditLog.open(tmp_path, signing_key=key, origin="mor://other/server")
    path = tmp_path / "entries.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"length":1', b'"length":7'))
    with pytest.raises(LogCorruptError, match=r"entries.jsonl line 2 \(entry index 1\)"):
        AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN)
    with pytest.raises(AuditConfigError):
        AuditLog.open(tmp_path / "x", signing_key=key, origin=ORIGIN, checkpoint_every=0)


def test_second_writer_in_the_same_process_is_refused(tmp_path: Path, key: SigningKey) -> None:
    with AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN), pytest.raises(LogLockedError, match="one writer"):
        AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN)
    AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN).close()  # released by close()


WRITER = """
import os, sys
from audit import AuditLog
from crypto.signing import SigningKey
log = AuditLog.open(sys.argv[1], signing_key=SigningKey.load(sys.argv[2]), origin=sys.argv[3])
for i in range(int(sys.argv[4])):
    log.append(actor="agent-x", action="submission.accepted", details={"i": i})
print("ready", flush=True)
if sys.argv[5] == "crash":
    os._exit(0)          # no close(): no final checkpoint, lock dropped by the kernel
sys.stdin.readline()
log.close()
"""


def _writer(tmp_path: Path, key: SigningKey, n: int, mode: str) -> subprocess.Popen:
    key_path = tmp_path / "writer.key"
    if not key_path.exists():
        key.save(key_path)
    return subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "log"), str(key_path), ORIGIN, str(n),
                             mode], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_second_writer_process_is_refused_with_a_clear_error(tmp_path: Path, key: SigningKey) -> None:
    proc = _writer(tmp_path, key, 2, "wait")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(LogLockedError, match=rf"already open for writing \(pid {proc.pid}\)"):
            AuditLog.open(tmp_path / "log", signing_key=key, origin=ORIGIN)
    finally:
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0
    assert verify_log(tmp_path / "log", key.verify_key()).ok


def test_crash_leaves_a_valid_prefix_and_a_torn_line_is_reported_then_recovered(tmp_path: Path,
                                                                                key: SigningKey) -> None:
    proc = _writer(tmp_path, key, 5, "crash")
    proc.communicate(timeout=30)
    log_dir = tmp_path / "log"
    assert not verify_log(log_dir, key.verify_key()).ok  # nothing signed covers them: not "fine" by default
    report = verify_log(log_dir, key.verify_key(), allow_unsealed_tail=True)
    assert report.ok and report.entries == 5 and report.uncovered == 5 and report.checkpoints == 0
    torn = b'{"entry":{"action":"submission.acc'
    with (log_dir / "entries.jsonl").open("ab") as handle:
        handle.write(torn)  # a crash in the middle of the sixth write
    report = verify_log(log_dir, key.verify_key())
    assert not report.ok and report.first_problem is not None
    assert (report.first_problem.kind, report.first_problem.line, report.first_problem.index) == ("torn", 6, 5)
    with pytest.warns(RuntimeWarning, match=f"dropped an incomplete last line of {len(torn)} bytes"), \
            AuditLog.open(log_dir, signing_key=key, origin=ORIGIN) as log:
        assert log.size == 6  # five survivors + the recovery entry
        log.append(actor="agent-x", action="after.recovery")
    entries = [json.loads(x)["entry"] for x in (log_dir / "entries.jsonl").read_text().splitlines()]
    assert entries[5]["action"] == "audit.recovered" and entries[5]["details"]["discarded_bytes"] == len(torn)
    assert verify_log(log_dir, key.verify_key()).ok


def test_concurrent_appends_get_unique_indices_and_a_valid_log(tmp_path: Path, key: SigningKey) -> None:
    receipts: list = []
    with AuditLog.open(tmp_path, signing_key=key, origin=ORIGIN, checkpoint_every=7) as log:
        def work(n: int) -> None:
            for i in range(25):
                receipts.append(log.append(actor=f"agent-{n}", action="submission.accepted", details={"i": i}))
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(r.index for r in receipts) == list(range(100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = verify_log(tmp_path, key.verify_key())
    assert report.ok and report.entries == 100 and report.checkpoints == 15
    assert report.actions_by_actor["agent-2"] == {"submission.accepted": 25}
