"""Run the packaged Alembic migrations programmatically (no ``alembic.ini`` needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from fedgate.server.db.engine import (
    OPEN_BUDGET,
    DatabaseError,
    DatabaseUnavailableError,
    RetryPolicy,
    current_policy,
    make_engine,
    retry_policy,
    write_txn,
)

SCRIPTS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x66656467  # advisory lock key: at most one migrator per database


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _unreachable(engine: Engine, exc: Exception) -> DatabaseError:
    first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    where = engine.url.render_as_string(hide_password=True)
    return DatabaseError(f"cannot open database {where}: {first}")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate ``engine``'s database to ``revision``; concurrent callers take turns."""
    cfg = alembic_config()
    try:
        with write_txn(engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except (OperationalError, DBAPIError) as exc:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise _unreachable(engine, exc) from None
        raise


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise _unreachable(engine, exc) from None


def check_current(engine: Engine) -> None:
    """Raise ``DatabaseError`` unless the database holds the newest fedgate schema."""
    current = current_revision(engine)
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise DatabaseError(f"{where} is not a fedgate database (no schema)")
    head = head_revision()
    if current != head:
        raise DatabaseError(f"{where} has schema {current}, expected {head}; start its server")


def open_database(url: str) -> Engine:
    """Engine for ``url`` with the schema migrated to the newest revision."""
    engine = make_engine(url)
    policy = current_policy()
    with retry_policy(RetryPolicy(budget=min(policy.budget, OPEN_BUDGET))):
        try:
            upgrade(engine)
        except DatabaseUnavailableError as exc:
            raise DatabaseError(
                f"cannot open database {exc.where}: {exc.cause} ({exc.attempts} attempt(s)); "
                f"{exc.hint}"
            ) from exc
    return engine


def open_readonly(url: str) -> Engine:
    """Read-only engine for ``url``; fails clearly unless it holds a current fedgate schema."""
    engine = make_engine(url, readonly=True)
    check_current(engine)
    return engine
