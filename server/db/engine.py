"""Database URLs and engines: SQLite file by default, PostgreSQL (psycopg 3) by URL.

``open_database`` migrates to the newest schema (Alembic) and is what servers call;
``open_readonly`` never writes (SQLite ``mode=ro``, PostgreSQL read-only transactions) and
is what auditors call.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_URL = "FEDGATE_DB"
_WRITE = "fedgate_write"


class DatabaseError(RuntimeError):
    """A database is missing, unreachable, of the wrong schema, or its URL is malformed."""


def default_url(home: str | Path, name: str) -> str:
    """The embedded default for region ``name``: ``sqlite:///<home>/region-<name>.db``."""
    return f"sqlite:///{Path(home).resolve() / f'region-{name}.db'}"


def coordinator_url(home: str | Path) -> str:
    """The coordinator's own embedded database: ``sqlite:///<home>/coordinator.db``."""
    return f"sqlite:///{Path(home).resolve() / 'coordinator.db'}"


def resolve_url(
    url: str | None = None, home: str | Path | None = None, name: str | None = None
) -> str:
    """Explicit ``url``, else ``$FEDGATE_DB``, else the SQLite default under ``home``."""
    if url:
        return url
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    if home is not None and name:
        return default_url(home, name)
    raise DatabaseError(f"no database given: pass a URL, set ${ENV_URL}, or name a region")


def parse_url(url: str) -> URL:
    """Parse and normalise ``url``; PostgreSQL always goes through psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"bad database URL {url!r}") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise DatabaseError(f"unsupported SQLite driver in {url!r}")
        return parsed
    raise DatabaseError(f"unsupported database {backend!r} in {url!r} (use sqlite or postgresql)")


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL (None for in-memory)."""
    db = url.database
    return None if not db or db == ":memory:" else Path(db)


def _sqlite_engine(url: URL, readonly: bool) -> Engine:
    path = sqlite_path(url)
    if path is None:
        raise DatabaseError("in-memory SQLite is not supported; give a file path")
    if readonly:
        if not path.is_file():
            raise DatabaseError(f"no database at {path}")
        target = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = url.render_as_string(hide_password=False)
    engine = create_engine(target, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # SQLAlchemy, not sqlite3, emits BEGIN (see the "begin" hook below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        if not readonly:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the database write lock up front, so two appenders never both
        # read the same chain head; readers use a plain deferred transaction.
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgres_engine(url: URL, readonly: bool) -> Engine:
    args: dict[str, object] = {"connect_timeout": 10}
    if readonly:
        given = url.query.get("options", "")
        given = given if isinstance(given, str) else " ".join(given)
        args["options"] = f"{given} -c default_transaction_read_only=on".strip()
    return create_engine(url, connect_args=args, pool_pre_ping=True)


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for ``url`` (no schema work); ``readonly`` refuses every write."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, readonly)
    return _postgres_engine(parsed, readonly)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def write_txn(engine: Engine) -> Iterator[Connection]:
    """A write transaction that holds the database's write lock on SQLite from its start."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


def open_database(url: str) -> Engine:
    """Engine for ``url`` with the schema migrated to the newest revision."""
    from fedgate.server.db.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    return engine


def open_readonly(url: str) -> Engine:
    """Read-only engine for ``url``; fails clearly unless it holds a current fedgate schema."""
    from fedgate.server.db.migrate import check_current

    engine = make_engine(url, readonly=True)
    check_current(engine)
    return engine
