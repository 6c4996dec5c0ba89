"""Downtime of ``mor server backup`` / ``restore`` for a state of N accepted CKKS-sized submissions.

    python -m sim.bench.state_backup --submissions 200 --dir /tmp/mor-backup-bench

Why synthetic rows: the time goes into reading, compressing and checking the envelopes and the
log, not into how they were made, so each submission carries a 330 KB random ciphertext-sized
blob (what one CKKS vector serialises to) and a receipt citing its real, signed audit entry —
enough for the restore's state/log agreement check to do its full work. SQLite, one process.
"""

from __future__ import annotations

import argparse
import base64
import os
import time
from pathlib import Path

from crypto.signing import SigningKey
from server.audit_trail import AuditLogTrail
from server.backup import backup
from server.config import load_server_config
from server.restore import restore
from server.state import StateStore
from sim.harness import write_toml

CIPHERTEXT_BYTES = 330_000


def _config(root: Path, name: str, key: Path) -> Path:
    return write_toml(root / f"{name}.toml", {
        "server": {"policy": "policy.toml", "database_url": f"sqlite:///{root / name / 'state.db'}",
                   "audit_dir": str(root / name / "audit"), "signing_key": str(key)},
        "tls": {"cert": "cert.pem", "key": "key.pem", "ca": "ca.pem", "crl": "crl.pem"}})


def _fill(root: Path, key: SigningKey, n: int) -> None:
    store = StateStore(f"sqlite:///{root / 'source' / 'state.db'}")
    audit = AuditLogTrail.open(root / "source" / "audit", key, origin="mor://bench/server")
    blob, now, agent = base64.b64encode(os.urandom(CIPHERTEXT_BYTES)).decode(), time.time(), "mor://bench/client/a"
    for i in range(n):
        round_id, task_id = f"r{i}", f"t{i}"
        store.create_round(round_id, kind="score", n_items=1, deadline=now + 60, now=now,
                           task_payloads={agent: (task_id, {"kind": "score"})})
        entry = audit.record(agent, "submission.accepted", {"task_id": task_id, "round_id": round_id})
        store.record_submission(task_id=task_id, agent=agent, round_id=round_id, envelope_sha256=f"{i:064x}",
                                envelope={"ciphertext_b64": blob}, now=now,
                                receipt={"audit_index": entry.index, "audit_leaf_sha256": entry.leaf_sha256})
    audit.close()
    store.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--dir", type=Path, required=True, help="a new folder for the state and the backup")
    args = parser.parse_args()
    root: Path = args.dir
    (root / "source").mkdir(parents=True)
    SigningKey.generate().save(root / "key.pem")
    _fill(root, SigningKey.load(root / "key.pem"), args.submissions)
    size = sum(f.stat().st_size for f in (root / "source").rglob("*") if f.is_file())
    started = time.perf_counter()
    backup(load_server_config(_config(root, "source", root / "key.pem")), root / "backup.tar.gz")
    backed_up = time.perf_counter() - started
    started = time.perf_counter()
    restore(load_server_config(_config(root, "restored", root / "key.pem")), root / "backup.tar.gz")
    restored = time.perf_counter() - started
    print(f"{args.submissions} submissions, state + log {size / 1e6:.1f} MB: backup {backed_up:.1f} s "
          f"({(root / 'backup.tar.gz').stat().st_size / 1e6:.1f} MB tarball), restore {restored:.1f} s")


if __name__ == "__main__":
    main()
