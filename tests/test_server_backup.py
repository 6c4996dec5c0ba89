"""Backup, restore and retention of the server's state and audit log, as an operator runs them.

What an operator relies on: ``mor server backup`` refuses while the server runs (state and log
would move under it) and otherwise writes state and log at one point, signed; ``mor server
restore`` puts it back — into SQLite or PostgreSQL — only after the backup proved itself
(signature, file digests, the log at the recorded size and root, every receipt in the state
citing the log entry that accepted it), refuses to overwrite a newer history without
``--force``, keeps what it replaces, and logs the restore. Retention deletes closed rounds
older than ``audit.retention_days`` with their envelopes and logs each deletion first.
Real server process over mutual TLS, real SQLite/PostgreSQL, real audit logs and keys.
"""

from __future__ import annotations

import gzip
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.consortium import Agent, actions, audit_report, enrol_and_submit, log_key, server_data, write_policy
from helpers.pki import make_pki
from helpers.postgres import Postgres
from helpers.procs import free_port, start_server, write_server_config
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import make_url

from audit import LogClosedError, verify_log
from crypto.canonical import canonical_json
from crypto.signing import SigningKey
from mor_cli.main import main
from server.audit_trail import AuditLogTrail
from server.backup import backup
from server.backup import sha256_file as digest_of
from server.config import load_server_config
from server.errors import StateError
from server.migrations import baseline_tables
from server.restore import restore
from server.retention import Purged, enforce_retention
from server.state import StateStore

pytestmark = pytest.mark.timeout(300)


class Site:
    """A server that accepted one submission, its stopped state, and a backup of it."""

    def __init__(self, root: Path) -> None:
        self.root, self.pki = root, make_pki(root)
        self.policy = write_policy(root / "policy.toml")
        self.config = write_server_config(root, self.pki, policy=self.policy, port=free_port())
        self.key = str(server_data(self.config)["signing_key"])

    def target(self, name: str, **overrides: object) -> Path:
        """Another server config with the same identity and key, its own (empty) state and log."""
        data = self.root / name
        return write_server_config(self.root, self.pki, policy=self.policy, port=free_port(), name=f"{name}.toml",
                                   signing_key=self.key, audit_dir=str(data / "audit"),
                                   **({"database_url": f"sqlite:///{data / 'state.db'}"} | overrides))


def _seed_pre_migration_state(url: str, *, round_age_days: float) -> None:
    """A state as the pre-migration server left it (no alembic_version), holding one long-closed round."""
    rounds, tasks, submissions, weights = (t for t in baseline_tables()
                                           if t.name in ("rounds", "tasks", "submissions", "router_weights"))
    then = time.time() - round_age_days * 86_400
    Path(str(make_url(url).database)).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in baseline_tables():
            table.create(conn)
        conn.execute(insert(rounds).values(round_id="old", kind="score", status="fused", created_at=then,
                                           deadline=then + 60, n_items=1, outcome="{}"))
        conn.execute(insert(tasks).values(task_id="old-t", round_id="old", agent="mor://testnet/client/gone",
                                          payload="{}", issued_at=then, deadline=then + 60, status="submitted"))
        conn.execute(insert(submissions).values(task_id="old-t", agent="mor://testnet/client/gone", round_id="old",
                                                envelope_sha256="ab" * 32, envelope="{}", receipt="{}",
                                                received_at=then))
        conn.execute(insert(weights).values(kind="uniform", digest="d", basis="b", by_domain="{}", overall="{}",
                                            updated_at=time.time()))  # id 1 from the table's own sequence
    engine.dispose()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, dict[str, Any]]]:
    site = Site(tmp_path_factory.mktemp("site"))
    db = str(server_data(site.config)["database_url"])
    _seed_pre_migration_state(db, round_age_days=40)  # the policy keeps 30 days
    with start_server(site.config) as server:
        alice = Agent.of(site.pki, "alice", server.base_url)
        task_id, _, reply = enrol_and_submit(alice, db)
        assert reply.status_code == 200, reply.text
        alice.close()
        with pytest.raises(StateError, match="The server is running: stop it first"):
            backup(load_server_config(site.config), site.root / "while-running")
        assert not (site.root / "while-running").exists()
        assert server.stop() == 0
    state_file = Path(str(make_url(db).database))
    leftovers = [c for c in ("-wal", "-shm") if state_file.with_name(state_file.name + c).exists()]
    assert state_file.is_file() and leftovers == [], "a stopped server leaves one state file"
    yield site, {"task_id": task_id, "receipt": reply.json()}


def test_backup_then_restore_elsewhere_gives_the_same_state_and_a_log_that_verifies(
        site: tuple[Site, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    s, accepted = site
    out = s.root / "b1.tar.gz"
    assert main(["server", "backup", "--config", str(s.config), "--out", str(out)]) == 0
    assert "backup written" in capsys.readouterr().out and out.stat().st_mode & 0o077 == 0
    source = verify_log(server_data(s.config)["audit_dir"], log_key(s.config))
    assert source.ok and actions(source)["state.migrated"] == 1  # the pre-migration state adopted at start
    assert actions(source)["state.purged"] == 1  # and its 40-day-old round deleted by retention, logged
    target = s.target("restored")
    assert main(["server", "restore", "--config", str(target), "--from", str(out)]) == 0
    store = StateStore(str(server_data(target)["database_url"]))
    assert store.submission(accepted["task_id"])["receipt"] == accepted["receipt"]  # type: ignore[index]
    store.engine.dispose()
    report = audit_report(target)
    assert report.ok and report.entries == source.entries + 1 and actions(report)["state.restored"] == 1
    with pytest.raises(StateError, match="not a prefix of the backup's"):  # target now holds more than b1
        restore(load_server_config(target), out)
    again = restore(load_server_config(target), out, force=True)
    assert again["kept_aside"] and (Path(again["kept_aside"]) / "entries.jsonl").read_bytes().count(b"\n") == \
        report.entries


def test_a_backup_restores_into_postgres_and_back(site: tuple[Site, dict[str, Any]], postgres: Postgres) -> None:
    s, accepted = site
    out = s.root / "b-pg"
    backup(load_server_config(s.config), out)
    url = postgres.new_database()
    on_postgres = load_server_config(s.target("pg", database_url=url))
    restore(on_postgres, out)
    store = StateStore(url)
    assert store.submission(accepted["task_id"])["receipt"] == accepted["receipt"]  # type: ignore[index]
    assert [a["identity"] for a in store.list_agents()] == [accepted["receipt"]["agent"]]
    store.set_router_weights(kind="learned", digest="e", basis="b", by_domain={}, overall={}, now=time.time())
    assert store.current_router_weights()["id"] == 2  # type: ignore[index]  # the id sequence moved past restored rows
    store.engine.dispose()
    manifest = backup(on_postgres, s.root / "b-from-pg")  # and back: PostgreSQL -> SQLite
    assert manifest["source_dialect"] == "postgresql"
    back = s.target("back-on-sqlite")
    restore(load_server_config(back), s.root / "b-from-pg")
    store = StateStore(str(server_data(back)["database_url"]))
    assert store.submission(accepted["task_id"])["receipt"] == accepted["receipt"]  # type: ignore[index]
    store.engine.dispose()
    assert actions(audit_report(back))["state.restored"] == 2  # one restore into PostgreSQL, one back


def _resign(directory: Path, key: SigningKey, change: Any) -> None:
    manifest = json.loads((directory / "manifest.json").read_bytes())
    change(directory, manifest)
    body = canonical_json(manifest)
    (directory / "manifest.json").write_bytes(body)
    (directory / "manifest.sig").write_text(key.sign(body).hex())


def _cite_another_entry(directory: Path, manifest: dict[str, Any]) -> None:
    path = directory / "state.jsonl.gz"
    with gzip.open(path, "rt") as lines:
        records = [json.loads(line) for line in lines]
    for record in records:
        if record["table"] == "submissions":
            receipt = json.loads(record["row"]["receipt"])
            record["row"]["receipt"] = json.dumps({**receipt, "audit_index": receipt["audit_index"] - 1})
    with gzip.open(path, "wt") as out:
        out.writelines(json.dumps(r) + "\n" for r in records)
    manifest["files"]["state.jsonl.gz"] = digest_of(path)


@pytest.mark.parametrize(("tamper", "refusal"), [
    ("unsigned", "not a backup signed by this server's key"),
    ("log-cut", "audit/entries.jsonl is missing or not the file the manifest lists"),
    ("state-disagrees", "state and audit log disagree"),
])
def test_a_backup_that_does_not_prove_itself_is_refused_and_nothing_changes(
        site: tuple[Site, dict[str, Any]], tamper: str, refusal: str) -> None:
    s, _ = site
    out = s.root / f"bad-{tamper}"
    backup(load_server_config(s.config), out)
    key = SigningKey.load(s.key)
    if tamper == "unsigned":
        _resign(out, SigningKey.generate(), lambda d, m: None)
    elif tamper == "log-cut":
        entries = out / "audit" / "entries.jsonl"
        entries.write_bytes(b"".join(entries.read_bytes().splitlines(keepends=True)[:-1]))
    else:
        _resign(out, key, _cite_another_entry)
    target = s.target(f"t-{tamper}")
    with pytest.raises(StateError, match=refusal):
        restore(load_server_config(target), out)
    assert not (Path(str(server_data(target)["audit_dir"])) / "entries.jsonl").exists()


def test_a_tarball_with_a_substituted_file_is_refused_before_anything_is_unpacked(
        site: tuple[Site, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A genuine signed manifest beside a large substitute state file: refused from the tar headers alone."""
    s, _ = site
    genuine = s.root / "genuine"
    backup(load_server_config(s.config), genuine)
    manifest = json.loads((genuine / "manifest.json").read_bytes())
    assert manifest["sizes"]["state.jsonl.gz"] == (genuine / "state.jsonl.gz").stat().st_size
    (genuine / "state.jsonl.gz").write_bytes(b"\0" * (4 << 20))  # what a hostile copy would unpack
    hostile = s.root / "hostile.tar.gz"
    with tarfile.open(hostile, "w:gz") as tar:
        tar.add(genuine, arcname="backup")
    unpacked: list[str] = []
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda self, *a, **k: unpacked.append("called"))
    target = s.target("t-substituted")
    with pytest.raises(StateError, match="the signed manifest lists .* nothing was unpacked"):
        restore(load_server_config(target), hostile)
    assert unpacked == [] and not (Path(str(server_data(target)["audit_dir"])) / "entries.jsonl").exists()


def test_retention_deletes_old_closed_rounds_and_logs_each_deletion_first(tmp_path: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    key = SigningKey.generate()
    audit = AuditLogTrail.open(tmp_path / "audit", key, origin="mor://testnet/server")
    now, day = time.time(), 86_400.0
    for round_id, age_days, status in (("old", 40, "fused"), ("old-open", 40, None), ("recent", 5, "fused")):
        task = f"{round_id}-t"
        store.create_round(round_id, kind="score", n_items=1, deadline=now, now=now - age_days * day,
                           task_payloads={"mor://testnet/client/a": (task, {"k": 1})})
        store.record_submission(task_id=task, agent="mor://testnet/client/a", round_id=round_id,
                                envelope_sha256="ab" * 32, envelope={"e": 1}, receipt={}, now=now)
        if status:
            store.close_round(round_id, status=status, outcome={})
    for age_days in (50, 45, 40):
        store.set_router_weights(kind="uniform", digest="d", basis="b", by_domain={}, overall={},
                                 now=now - age_days * day)
    assert enforce_retention(store, audit, retention_days=30, now=now) == Purged(1, 1, 1, 2)
    assert store.submission("old-t") is None and store.submission("old-open-t") and store.submission("recent-t")
    assert store.current_router_weights() is not None  # the newest is kept, however old
    assert enforce_retention(store, audit, retention_days=30, now=now) == Purged()
    store.close_round("old-open", status="skipped", outcome={})
    audit.close()
    with pytest.raises(LogClosedError):  # the deletion cannot be logged, so it does not happen
        enforce_retention(store, audit, retention_days=30, now=now)
    assert store.submission("old-open-t") is not None
    store.engine.dispose()
    log = [json.loads(line)["entry"] for line in (tmp_path / "audit" / "entries.jsonl").read_text().splitlines()]
    purged = [e["details"] for e in log if e["action"] == "state.purged"]
    assert [p.get("round_id", p.get("table")) for p in purged] == ["old", "router_weights"]
    assert purged[0]["submissions"] == 1 and len(purged[0]["submissions_sha256"]) == 64
    assert verify_log(tmp_path / "audit", key.verify_key()).ok


@pytest.mark.parametrize(("argv", "says"), [
    (["backup", "--out", "{root}"], "already exists; a backup never overwrites"),
    (["restore", "--from", "{root}/nowhere.tar.gz"], "no such backup"),
    (["restore", "--from", "{root}/policy.toml"], "not a readable backup tarball"),
])
def test_cli_refusals_are_one_line_and_exit_2(site: tuple[Site, dict[str, Any]], capsys: pytest.CaptureFixture[str],
                                              argv: list[str], says: str) -> None:
    s, _ = site
    args = [a.format(root=s.root) for a in argv]
    assert main(["server", args[0], "--config", str(s.config), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
