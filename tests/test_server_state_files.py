"""The server's state on disk and its start-up checks: private files, clear refusals, no tracebacks.

``state.db`` holds enrolments, receipts and (under tls-only) plaintext scores, so it and its
WAL/shared-memory files must be 0600 whatever the umask. A database URL that cannot work, or
a policy for another consortium than the server's certificate, must stop the start with one
line naming the setting — not a traceback, and not a server that starts and refuses everyone.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.consortium import write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, write_server_config

from mor_cli.main import main
from server.config import load_server_config
from server.errors import ConfigError
from server.state import StateStore
from server.wiring import open_server


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


@pytest.mark.parametrize("umask", [0o000, 0o022], indirect=True)
def test_state_files_are_created_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    store.upsert_agent("mor://testnet/client/a", signing_key_b64="k", architecture="mlp", epsilon=1.0, delta=1e-6,
                       privacy_report={}, now=1.0)
    assert store.agent("mor://testnet/client/a") is not None
    modes = _modes(tmp_path)
    assert {"state.db", "state.db-wal", "state.db-shm"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)
    store.engine.dispose()


def test_an_existing_world_readable_state_db_is_tightened_on_open(tmp_path: Path) -> None:
    StateStore(f"sqlite:///{tmp_path}/state.db").engine.dispose()
    os.chmod(tmp_path / "state.db", 0o644)  # e.g. created by an older version
    StateStore(f"sqlite:///{tmp_path}/state.db").engine.dispose()
    assert stat.S_IMODE((tmp_path / "state.db").stat().st_mode) == 0o600


@pytest.mark.parametrize(("url", "says"), [
    ("mysqlx://admin:hunter2@db/state", "unknown database scheme 'mysqlx'"),
    ("state.db", "not a database URL"),
    ("sqlite:////no/such/directory/state.db", "cannot create /no/such/directory/state.db"),
])
def test_a_database_url_that_cannot_work_is_one_clear_config_error(tmp_path: Path, url: str, says: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        StateStore(url)
    assert "hunter2" not in str(caught.value)
    pki = make_pki(tmp_path / "pki")
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=free_port(),
                                 database_url=url)
    assert main(["server", "serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "database_url" in err and len(err.splitlines()) == 1 and "hunter2" not in err


def test_a_policy_for_another_consortium_than_the_certificate_is_refused_at_start(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", consortium="othernet")
    policy = write_policy(tmp_path / "policy.toml", consortium="testnet")
    config = load_server_config(write_server_config(tmp_path, pki, port=free_port(), policy=policy))
    with pytest.raises(ConfigError, match="policy is for consortium 'testnet'.*mor://othernet/server/server"):
        open_server(config)
    good = load_server_config(write_server_config(tmp_path / "good", pki, port=free_port(),
                                                  policy=write_policy(tmp_path / "good.toml", consortium="othernet")))
    open_server(good).close()  # the same certificate with its own consortium's policy starts
