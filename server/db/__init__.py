"""Storage: SQLAlchemy engines, Alembic-migrated schema, blob store.

The region's repository API (``Store``) is ``fedgate.server.audit.store``: it writes through
the audit log, which sits on this package.
"""

from fedgate.server.db.blobs import BlobError, BlobStore
from fedgate.server.db.engine import (
    DatabaseError,
    coordinator_url,
    default_url,
    make_engine,
    resolve_url,
    write_txn,
)
from fedgate.server.db.migrate import open_database, open_readonly

__all__ = [
    "BlobError",
    "BlobStore",
    "DatabaseError",
    "coordinator_url",
    "default_url",
    "make_engine",
    "open_database",
    "open_readonly",
    "resolve_url",
    "write_txn",
]
