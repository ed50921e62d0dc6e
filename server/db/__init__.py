"""Storage: SQLAlchemy engines, Alembic-migrated schema, repository API, blob store.

``Store`` and its records are imported lazily (the audit package imports this one).
"""

from typing import Any

from fedgate.server.db.blobs import BlobError, BlobStore
from fedgate.server.db.engine import (
    DatabaseError,
    coordinator_url,
    default_url,
    make_engine,
    open_database,
    open_readonly,
    resolve_url,
    write_txn,
)

__all__ = [
    "BlobError",
    "BlobStore",
    "DatabaseError",
    "RoundInfo",
    "RunInfo",
    "Store",
    "StoreError",
    "UpdateInfo",
    "coordinator_url",
    "default_url",
    "make_engine",
    "open_database",
    "open_readonly",
    "resolve_url",
    "write_txn",
]

_LAZY = ("RoundInfo", "RunInfo", "Store", "StoreError", "UpdateInfo")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from fedgate.server.db import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
