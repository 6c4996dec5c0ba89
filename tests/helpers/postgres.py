"""A real PostgreSQL server for the state store's tests: a throwaway cluster on loopback.

Tests take it as the session fixture ``postgres`` (tests/conftest.py): one cluster per run.

Why a private cluster and not the machine's ``main`` one: the test owns everything it touches
(a temporary data directory, a free port on 127.0.0.1, a role and databases it creates with
passwords, scram-sha-256 over TCP as in production) and leaves nothing behind. It needs the
Debian ``postgresql`` package's binaries (``deploy/system-packages.sh`` installs them as root);
as root the cluster runs as the ``postgres`` user, because ``initdb`` refuses to run as root.

``MOR_TEST_POSTGRES_URL`` (a superuser URL) points the tests at a server you already run instead.
Without either the tests skip and say why — except under ``CI=true``, where they fail: CI installs
the server, so a skip there would hide a broken setup.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from helpers.procs import free_port

LOOPBACK = "127.0.0.1"


def unavailable(reason: str) -> None:
    """Skip with ``reason`` — or fail under CI, where PostgreSQL is installed on purpose."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {reason}")


@dataclass
class Postgres:
    """A reachable server and a superuser URL; :meth:`new_database` gives each test its own database."""

    admin_url: str
    role: str
    password: str
    count: int = 0

    def new_database(self) -> str:
        """A fresh database owned by the test's (non-superuser) role; its SQLAlchemy URL."""
        import psycopg

        self.count += 1
        name = f"mor_state_{os.getpid()}_{self.count}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{self.role}"')
        url = make_url(self.admin_url).set(drivername="postgresql+psycopg", username=self.role,
                                           password=self.password, database=name)
        return url.render_as_string(hide_password=False)


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _create_role(admin_url: str) -> tuple[str, str]:
    import psycopg

    role, password = "mor_state_test", secrets.token_hex(16)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    return role, password


@contextlib.contextmanager
def _private_cluster(bindir: Path) -> Iterator[str]:
    """initdb + pg_ctl start on a free loopback port; yields the superuser URL; stops and removes it after."""
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no 'postgres' user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="mor-pg-"))
    user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if as_root else {}
    password, port = secrets.token_hex(16), free_port()
    (root / "pw").write_text(password)
    if as_root:
        for path in (root, root / "pw"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    data, log = root / "data", root / "server.log"
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                        f"--pwfile={root / 'pw'}", "-E", "UTF8", "--no-sync"], check=True, capture_output=True,
                       cwd=root, timeout=120, **user)
        settings = f"-c listen_addresses={LOOPBACK} -p {port} -k {root}"
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", settings, "-w", "-t", "60",
                        "start"], check=True, capture_output=True, cwd=root, timeout=90, **user)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()[-400:]
        shutil.rmtree(root, ignore_errors=True)
        unavailable(f"{Path(exc.cmd[0]).name} failed: {detail}")
    try:
        yield f"postgresql://postgres:{password}@{LOOPBACK}:{port}/postgres"
    finally:  # immediate: no shutdown checkpoint to fsync for a cluster that is deleted next
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       cwd=root, timeout=60, **user)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """The server for this test session (see the module docstring), with a fresh role."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("the psycopg driver is not installed (pip install -e '.[postgres]')")
    given = os.environ.get("MOR_TEST_POSTGRES_URL")
    if given:
        yield Postgres(given, *_create_role(given))
        return
    bindir = _binaries()
    if bindir is None:
        unavailable("PostgreSQL server binaries not found under /usr/lib/postgresql (Debian: apt-get install "
                    "postgresql; deploy/system-packages.sh does it as root), and MOR_TEST_POSTGRES_URL is unset")
        return
    with _private_cluster(bindir) as admin_url:
        yield Postgres(admin_url, *_create_role(admin_url))
