"""The state store on a real PostgreSQL server, and its schema migrations on both databases.

What an operator relies on: ``database_url = "postgresql+psycopg://..."`` keeps every promise
SQLite keeps — one accepted submission per task and one use per nonce even when requests race,
a commit that is on disk before a receipt is signed — and one real round runs through the real
server over mutual TLS. Opening a store migrates its schema (Alembic): an empty database is
created at the newest revision, a database made by the pre-migration code (``create_all``) is
adopted, and one newer than the software is refused with a message that says what to do.

PostgreSQL comes from :mod:`helpers.postgres` (a throwaway cluster on loopback); without one
these tests skip and say why, and under ``CI=true`` they fail.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from helpers.consortium import Agent, actions, audit_report, enrol_and_submit, write_policy
from helpers.pki import make_pki
from helpers.postgres import Postgres
from helpers.procs import free_port, start_server, write_server_config
from sqlalchemy import create_engine, insert, select, text

from server.errors import StateError
from server.migrations import baseline_tables, head_revision
from server.state import StateStore
from server.state_tables import metadata, submissions
from wire.messages import Receipt

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres").new_database()


def test_an_empty_database_gets_the_newest_schema_exactly_as_the_tables_say(database_url: str) -> None:
    store = StateStore(database_url)
    assert (store.schema_change.before, store.schema_change.after, store.schema_change.adopted) == (
        None, head_revision(), False)
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []  # migrations == state_tables.py
    store.engine.dispose()
    again = StateStore(database_url)
    assert not again.schema_change.changed
    again.engine.dispose()


def test_a_pre_migration_database_is_adopted_with_its_rows(database_url: str) -> None:
    baseline = baseline_tables()
    engine = create_engine(database_url)
    with engine.begin() as conn:  # what the pre-Alembic server's metadata.create_all made, minus a later table
        for table in baseline[:-1]:
            table.create(conn)
        conn.execute(insert(baseline[3]).values(task_id="t1", agent="a", round_id="r1", envelope_sha256="0" * 64,
                                                envelope="{}", receipt="{}", received_at=1.0))
    engine.dispose()
    store = StateStore(database_url)
    assert (store.schema_change.before, store.schema_change.adopted) == (None, True)
    assert store.submission("t1") is not None and store.member_health() == {}
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    store.engine.dispose()


@pytest.mark.parametrize(("prepare", "refusal"), [
    ("UPDATE alembic_version SET version_num = '9999'", "revision '9999', newer than this software knows"),
    ("CREATE TABLE agents (name VARCHAR(20))", "table 'agents' has no column"),
], ids=["schema-newer-than-the-software", "foreign-table-of-the-same-name"])
def test_a_schema_this_code_cannot_own_is_refused(database_url: str, prepare: str, refusal: str) -> None:
    if prepare.startswith("UPDATE"):
        StateStore(database_url).engine.dispose()
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(prepare))
    engine.dispose()
    with pytest.raises(StateError, match=refusal):
        StateStore(database_url)


def _round(store: StateStore, round_id: str, agents: list[str]) -> dict[str, str]:
    tasks = {agent: (f"{round_id}-{i}", {"kind": "score"}) for i, agent in enumerate(agents)}
    store.create_round(round_id, kind="score", n_items=1, deadline=time.time() + 60, now=time.time(),
                       task_payloads=tasks)
    return {agent: task_id for agent, (task_id, _) in tasks.items()}


def _race(n: int, action: object) -> list[bool]:
    results: list[bool] = []
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        results.append(action(i))  # type: ignore[operator]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_racing_writers_keep_one_submission_per_task_and_one_use_per_nonce(postgres: Postgres) -> None:
    store = StateStore(postgres.new_database())
    with store.engine.connect() as conn:  # the session guarantees state_files promises
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
    agents = [f"mor://testnet/client/m{i}" for i in range(8)]
    tasks = _round(store, "r1", agents)

    def submit(i: int, task_id: str, agent: str) -> bool:
        return store.record_submission(task_id=task_id, agent=agent, round_id="r1", envelope_sha256=f"{i:064x}",
                                       envelope={"i": i}, receipt={"i": i}, now=time.time())

    twins = _race(8, lambda i: submit(i, tasks[agents[0]], agents[0]))
    assert sorted(twins) == [False] * 7 + [True]
    winner = store.submission(tasks[agents[0]])
    assert winner is not None and winner["receipt"] == winner["envelope"]  # one writer's row, whole
    others = _race(7, lambda i: submit(i, tasks[agents[i + 1]], agents[i + 1]))
    assert others == [True] * 7 and store.count_submissions() == 8
    assert store.task(tasks[agents[3]]).status == "submitted"  # type: ignore[union-attr]
    replays = _race(8, lambda i: store.check_and_add("mor://testnet/client/m0", "n-1", time.time() + 60))
    assert sorted(replays) == [False] * 7 + [True]
    store.engine.dispose()


def test_the_store_round_trips_every_kind_of_row_on_postgres(postgres: Postgres) -> None:
    store = StateStore(postgres.new_database())
    agent = "mor://testnet/client/alice"
    store.upsert_agent(agent, signing_key_b64="k" * 44, architecture="mlp", epsilon=3.0, delta=1e-6,
                       privacy_report={"eps": 3.0}, now=10.0)
    store.set_calibration(agent, {"mean": 0.5, "std": 1.25, "n": 3})
    task_id = _round(store, "r1", [agent])[agent]
    task = store.next_task(agent, time.time())
    assert task is not None and task.task_id == task_id and store.next_task(agent, time.time() + 3600) is None
    assert store.decline_task(task_id, agent) and not store.decline_task(task_id, agent)
    store.close_round("r1", status="skipped", outcome={"why": "test"})
    assert store.round_counts()["skipped"] == 1
    store.set_router_weights(kind="learned", digest="d", basis="b", by_domain={"x": {agent: 1.0}},
                             overall={agent: 1.0}, now=1.0)
    assert store.current_router_weights()["overall"] == {agent: 1.0}  # type: ignore[index]
    store.set_dataset("prompts", {"count": 3}, now=1.0)
    store.set_member_health(agent, failures=2, quarantined_until=None, reason="r")
    assert store.list_datasets()[0]["count"] == 3 and store.member_health()[agent]["failures"] == 2
    row = store.agent(agent)
    assert row is not None and row["epsilon"] == 3.0 and row["calibration"]
    assert store.check_and_add(agent, "old", 1.0) and store.purge_nonces(now=2.0) == 1 and store.count_nonces() == 0
    store.engine.dispose()


def test_a_round_through_the_real_server_on_postgres_survives_a_restart(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.new_database()
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=free_port(),
                                 database_url=url)
    with start_server(config) as server:
        alice = Agent.of(pki, "alice", server.base_url)
        task_id, envelope, reply = enrol_and_submit(alice, url)
        assert reply.status_code == 200, reply.text
        receipt = Receipt.model_validate(reply.json())
        alice.close()
        server.kill()  # kill -9: the receipt was signed after the commit, so the row must be there
    engine = create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(select(submissions.c.envelope_sha256).where(submissions.c.task_id == task_id)).scalar()
    engine.dispose()
    assert stored == receipt.envelope_sha256
    with start_server(config, log=tmp_path / "restarted.log") as server:
        alice = alice.reconnect(server.base_url)
        again = alice.submit(task_id, envelope)
        assert again.status_code == 200 and Receipt.model_validate(again.json()) == receipt
        alice.close()
        assert server.stop() == 0
    report = audit_report(config)
    assert report.ok, report.first_problem
    assert actions(report)["submission.accepted"] == 1


def test_a_fused_round_on_postgres(postgres: Postgres, tmp_path: Path) -> None:
    """The coordinator's whole round — tasks issued, three members' CKKS envelopes, fusion — on PostgreSQL."""
    from test_rounds_coordinator import AGENTS, ITEMS, PROMPTS, World, expected

    world = World(tmp_path, database_url=postgres.new_database())
    try:
        for agent in AGENTS:
            world.run_agent(agent)
        result = world.coordinator(quorum=3, deadline_s=20).run_round("score", PROMPTS, ITEMS)
        assert result.status == "fused" and result.agents_used == AGENTS
        assert result.rewards == pytest.approx(expected(world, AGENTS, PROMPTS, ITEMS), abs=1e-3)
        assert world.state.round_counts()["fused"] == 1 and world.state.count_submissions() == 3
    finally:
        world.close()
        world.state.engine.dispose()


def test_the_server_refuses_to_start_on_a_newer_schema_and_says_what_to_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mor_cli.main import main

    config = write_server_config(tmp_path, make_pki(tmp_path), policy=write_policy(tmp_path / "policy.toml"),
                                 port=free_port())
    url = f"sqlite:///{tmp_path / 'server-data' / 'state.db'}"
    (tmp_path / "server-data").mkdir(exist_ok=True)
    StateStore(url).engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    assert main(["server", "serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "newer than this software knows" in err and "mor server restore" in err and "Traceback" not in err


def test_a_wrong_password_is_one_config_error_that_never_echoes_it(postgres: Postgres) -> None:
    from sqlalchemy.engine import make_url

    from server.errors import ConfigError

    url = make_url(postgres.new_database()).set(password="hunter2-wrong")
    with pytest.raises(ConfigError, match="cannot open the database: .*password authentication failed") as caught:
        StateStore(url.render_as_string(hide_password=False))
    assert "hunter2" not in str(caught.value)


def test_url_options_are_kept_but_cannot_turn_synchronous_commit_off(postgres: Postgres) -> None:
    url = postgres.new_database() + "?options=-c%20statement_timeout%3D12345%20-c%20synchronous_commit%3Doff"
    store = StateStore(url)
    with store.engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "12345ms"
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
    store.engine.dispose()
