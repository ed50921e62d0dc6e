"""Database URLs and engines: SQLite file by default, PostgreSQL (psycopg 3) by URL.

``open_database`` (in ``migrate``) migrates to the newest schema (Alembic) and is what
servers call; ``open_readonly`` (there too) never writes (SQLite ``mode=ro``, PostgreSQL
read-only transactions) and is what auditors call.

Writes survive a database that is unavailable for a moment: ``write_txn`` retries getting a
connection and the write lock, ``run_write`` retries a whole transaction, both with backoff
within a ``RetryPolicy`` budget (``$FEDGATE_DB_RETRY_SECONDS``, default 30 s; opening a
database retries for at most 2 s), then raise ``DatabaseError`` naming the database.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, Transaction, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from fedgate.errors import UnavailableError, UsageError

ENV_URL = "FEDGATE_DB"
ENV_RETRY = "FEDGATE_DB_RETRY_SECONDS"
_WRITE = "fedgate_write"
PG_POOL = 20  # PostgreSQL connections an engine keeps open (and as many more at a peak)
_READ_BUSY_MS = 60000  # SQLite readers rarely wait (WAL); a checkpoint may hold them briefly

log = logging.getLogger("fedgate.db")
log.addHandler(logging.NullHandler())  # library: quiet unless the application configures it
T = TypeVar("T")


class DatabaseError(UsageError, RuntimeError):
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
        cur.execute(f"PRAGMA busy_timeout={_READ_BUSY_MS}")
        if not readonly:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the database write lock up front, so two appenders never both
        # read the same chain head; readers use a plain deferred transaction. A writer waits
        # at most one attempt's ``lock_wait`` here; ``write_txn``/``run_write`` retry.
        if not conn.get_execution_options().get(_WRITE, False):
            conn.exec_driver_sql("BEGIN")
            return
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.execute(f"PRAGMA busy_timeout={int(current_policy().lock_wait * 1000)}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            raw.execute(f"PRAGMA busy_timeout={_READ_BUSY_MS}")

    return engine


def _postgres_engine(url: URL, readonly: bool) -> Engine:
    args: dict[str, object] = {"connect_timeout": 10}
    options: dict[str, object] = {}
    if readonly:
        # Two layers: the session's default, and every transaction begun READ ONLY (psycopg's
        # ``read_only``), which a session that sets the default back off does not undo.
        given = url.query.get("options", "")
        given = given if isinstance(given, str) else " ".join(given)
        args["options"] = f"{given} -c default_transaction_read_only=on".strip()
        options["postgresql_readonly"] = True
    # Keep up to PG_POOL connections: with the default 5, a service answering 16 clients at
    # once opened (and closed) a new server connection for most requests.
    return create_engine(
        url, connect_args=args, pool_pre_ping=True, pool_size=PG_POOL, max_overflow=PG_POOL,
        execution_options=options,
    )  # fmt: skip


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for ``url`` (no schema work); ``readonly`` refuses every write."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, readonly)
    return _postgres_engine(parsed, readonly)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


# -- retrying writes ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How long a write keeps retrying a database that is unavailable for a moment."""

    budget: float = 30.0  # seconds from the first attempt after which the write gives up
    first_delay: float = 0.1  # backoff: first pause, doubled after every failed attempt ...
    max_delay: float = 2.0  # ... up to this
    lock_wait: float = 1.0  # SQLite: how long one attempt waits for the write lock

    @classmethod
    def from_env(cls) -> RetryPolicy:
        raw = os.environ.get(ENV_RETRY, "")
        try:
            return cls(budget=max(0.0, float(raw))) if raw else cls()
        except ValueError:
            raise DatabaseError(f"${ENV_RETRY} must be a number of seconds, got {raw!r}") from None


OPEN_BUDGET = 2.0  # opening a database: a wrong URL should fail fast
_POLICY: ContextVar[RetryPolicy | None] = ContextVar("fedgate_db_retry", default=None)


def current_policy() -> RetryPolicy:
    """The policy set by ``retry_policy`` in this context, else the environment's."""
    return _POLICY.get() or RetryPolicy.from_env()


@contextmanager
def retry_policy(policy: RetryPolicy) -> Iterator[RetryPolicy]:
    """Use ``policy`` for every write started inside this block (this thread/context)."""
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


_PG_TRANSIENT_STATES = {"40001", "40P01", "53300", "57P01", "57P02", "57P03"}


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can cure: no connection, server restarting, SQLite busy."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if type(orig).__module__.startswith("sqlite3"):
        text = str(orig).lower()
        return isinstance(exc, OperationalError) and ("locked" in text or "busy" in text)
    state = getattr(orig, "sqlstate", None) or ""
    if state in _PG_TRANSIENT_STATES or state.startswith("08"):
        return True
    # psycopg reports a refused/failed connection as OperationalError without a SQLSTATE.
    return isinstance(exc, OperationalError | InterfaceError) and not state


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _cause(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hint(engine: Engine) -> str:
    if is_sqlite(engine):
        return f"another process may hold its write lock (`fuser {engine.url.database}`)"
    url = engine.url
    return f"check that the PostgreSQL server at {url.host}:{url.port or 5432} is running"


class DatabaseUnavailableError(DatabaseError, UnavailableError):
    """A write gave up: the database stayed unreachable or locked for the whole budget."""

    exit_code = UnavailableError.exit_code

    def __init__(self, engine: Engine, what: str, attempts: int, elapsed: float, budget: float,
                 cause: BaseException) -> None:  # fmt: skip
        self.where, self.what, self.attempts = _where(engine), what, attempts
        self.cause, self.hint = _cause(cause), _hint(engine)
        super().__init__(
            f"database {self.where} unavailable: {what} failed {attempts} time(s) over "
            f"{elapsed:.1f} s (retry budget {budget:g} s, ${ENV_RETRY}): {self.cause}; "
            f"{self.hint}"
        )


class _Attempts:
    """Backoff bookkeeping for one write: ``failed`` sleeps, or raises once over budget."""

    def __init__(self, engine: Engine, what: str) -> None:
        self.engine, self.what = engine, what
        self.policy = current_policy()
        self.start = time.monotonic()
        self.count = 0
        self.delay = self.policy.first_delay

    def failed(self, exc: DBAPIError) -> None:
        self.count += 1
        elapsed = time.monotonic() - self.start
        if elapsed + self.delay > self.policy.budget:
            raise DatabaseUnavailableError(
                self.engine, self.what, self.count, elapsed, self.policy.budget, exc
            ) from exc
        log.warning(
            "database %s: %s failed (%s); retry %d in %.1f s",
            _where(self.engine), self.what, _cause(exc), self.count, self.delay,
        )  # fmt: skip
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.policy.max_delay)


def _begin_write(engine: Engine, attempts: _Attempts) -> tuple[Connection, Transaction]:
    """A connection holding an open write transaction, retrying transient failures."""
    while True:
        conn = None
        try:
            conn = engine.connect()  # PostgreSQL: the pool pings it first (pool_pre_ping)
            conn.execution_options(**{_WRITE: True})
            return conn, conn.begin()
        except DBAPIError as exc:
            if conn is not None:
                conn.close()
            if not is_transient(exc):
                raise
            attempts.failed(exc)


class _LostDuringWrite(DatabaseError):
    """The connection failed inside a write transaction (``__cause__`` is the DB error)."""


@contextmanager
def _write_txn(engine: Engine, attempts: _Attempts) -> Iterator[Connection]:
    conn, txn = _begin_write(engine, attempts)
    with conn:
        try:
            with txn:
                yield conn
        except DBAPIError as exc:
            if not is_transient(exc):
                raise
            raise _LostDuringWrite(
                f"database {_where(engine)} went away during {attempts.what}; the write was "
                f"not confirmed: {_cause(exc)}; {_hint(engine)}"
            ) from exc


@contextmanager
def write_txn(engine: Engine, what: str = "a write") -> Iterator[Connection]:
    """A write transaction that holds the database's write lock on SQLite from its start.

    Getting the connection and the lock is retried (``RetryPolicy``); the body runs once, so
    a transient failure inside it raises ``DatabaseError`` (``run_write`` replays instead).
    """
    with _write_txn(engine, _Attempts(engine, what)) as conn:
        yield conn


def run_write(engine: Engine, work: Callable[[Connection], T], what: str) -> T:
    """Run ``work(conn)`` in a write transaction; replay it after transient failures.

    A failure before the commit rolled the transaction back, so the replay is safe; a
    connection lost during the commit itself is not replayed (it may have committed).
    """
    attempts = _Attempts(engine, what)
    while True:
        committing = False
        try:
            with _write_txn(engine, attempts) as conn:
                result = work(conn)
                committing = True
            return result
        except _LostDuringWrite as exc:
            if committing:
                raise
            attempts.failed(exc.__cause__)  # type: ignore[arg-type]
