"""PostgreSQL servers for the tests: the machine's (127.0.0.1:5432, trust auth, database
``test``) when it answers, else a private one this module starts (``initdb`` in a temporary
folder, as a non-root user, on a free port). Never a skip: without either, the tests fail.

Each test run works in its own database (``archon_chat_test_<random>``), dropped at the
end; each test in its own schema of it, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
import pytest
from psycopg import conninfo, sql

SHARED_URL = os.environ.get("ARCHON_CHAT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class PostgresServer:
    """A server the tests may use; ``admin_url`` connects to an existing database."""

    admin_url: str
    description: str
    data_dir: Path | None = None
    bin_dir: Path | None = None
    user: str | None = None
    port: int = 0

    @property
    def private(self) -> bool:
        return self.data_dir is not None

    def url(self, dbname: str, **params: str) -> str:
        """A ``postgresql://`` URL of ``dbname`` on this server (as the setting takes)."""
        parts = conninfo.conninfo_to_dict(self.admin_url)
        query = f"?{urlencode(params, quote_via=quote)}" if params else ""
        return (
            f"postgresql://{parts.get('user') or 'postgres'}@{parts.get('host')}:"
            f"{parts.get('port') or 5432}/{dbname}{query}"
        )

    def create_database(self) -> str:
        name = f"archon_chat_test_{secrets.token_hex(6)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- private servers only --------------------------------------------------------

    def _ctl(self, *args: str) -> None:
        assert self.bin_dir is not None and self.data_dir is not None
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        subprocess.run(_as(self.user, command), check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        """Stop at once, cutting every connection (``-m fast``)."""
        self._ctl("-m", "fast", "-w", "stop")

    def start_if_stopped(self) -> None:
        """Leave the server running, whatever a failed test left it in."""
        assert self.bin_dir is not None and self.data_dir is not None
        status = subprocess.run(
            _as(self.user, [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"]),
            capture_output=True,
            timeout=60,
        )
        if status.returncode == 3:  # "no server running"
            self.start()

    def start(self) -> None:
        assert self.data_dir is not None
        self._ctl(
            "-w",
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )


def _as(user: str | None, command: list[str]) -> list[str]:
    return command if user is None else ["runuser", "-u", user, "--", *command]


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "no PostgreSQL at 127.0.0.1:5432 and no initdb to start one: "
            "`make test` installs Debian's postgresql"
        )
    return Path(initdb).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_server() -> Iterator[PostgresServer]:
    """A server of our own, in a temporary folder, removed afterwards."""
    bin_dir = _bin_dir()
    user = None
    if os.geteuid() == 0:  # initdb refuses root
        user = "postgres"
        pwd.getpwnam(user)  # KeyError: no such user (Debian's package creates it)
    data_dir = Path(tempfile.mkdtemp(prefix="archon-chat-pg-"))
    if user is not None:
        info = pwd.getpwnam(user)
        os.chown(data_dir, info.pw_uid, info.pw_gid)
    server = PostgresServer(
        admin_url=f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres",
        description="",
        data_dir=data_dir / "data",
        bin_dir=bin_dir,
        user=user,
    )
    server.port = int(conninfo.conninfo_to_dict(server.admin_url)["port"] or 0)
    server.description = f"a private PostgreSQL server on 127.0.0.1:{server.port} ({bin_dir})"
    try:
        subprocess.run(
            _as(
                user,
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(server.data_dir),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def any_server() -> Iterator[PostgresServer]:
    """The machine's server if it answers, else a private one."""
    if _reachable(SHARED_URL):
        where = conninfo.conninfo_to_dict(SHARED_URL)
        yield PostgresServer(
            SHARED_URL, f"the PostgreSQL server at {where.get('host')}:{where.get('port')}"
        )
        return
    with private_server() as server:
        yield server


# -- fixtures (imported by the conftest or test modules that use them) -----------------

#: the servers this run used, for the summary line
SERVERS_USED: list[str] = []


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with any_server() as server:
        SERVERS_USED.append(server.description)
        yield server


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PostgresServer]:
    """A server of this run's own, which a test may stop and start."""
    with private_server() as server:
        SERVERS_USED.append(server.description + ", for the restart tests")
        yield server


def _database(server: PostgresServer) -> Iterator[tuple[PostgresServer, str]]:
    name = server.create_database()
    try:
        yield server, name
    finally:
        server.drop_database(name)


@pytest.fixture(scope="session")
def pg_database(pg_server: PostgresServer) -> Iterator[tuple[PostgresServer, str]]:
    """This run's database on :func:`pg_server`, dropped at the end."""
    yield from _database(pg_server)


@pytest.fixture
def pg_url(pg_database: tuple[PostgresServer, str]) -> Iterator[str]:
    """A URL whose tables land in a schema of this test's own."""
    server, dbname = pg_database
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server.url(dbname), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield server.url(dbname, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(server.url(dbname), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
