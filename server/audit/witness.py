"""The region's witness mirror: every signed head, appended to a file outside the database
once the transaction that signed it has committed.

``AuditLog.sign_in`` queues the head on the connection; the engine's ``commit`` event moves
the queue to "committing", a failed statement or commit (``handle_error``) or a rollback drops
it, and the pool's ``checkin`` (the connection handed back after a successful commit) appends
the lines. So the mirror never names a head the database does not hold; a crash between the
commit and the append loses that one line, and verification of the next head covers it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event

from fedgate.server.audit.anchors import head_json, witness_file
from fedgate.server.audit.chain import HeadRecord

_QUEUED = "fedgate.audit.witness.queued"
_COMMITTING = "fedgate.audit.witness.committing"
log = logging.getLogger(__name__)


def queue(conn: Connection, directory: Path, chain: str, head: HeadRecord) -> None:
    """Mirror ``head`` into ``directory`` once ``conn``'s transaction commits."""
    attach(conn.engine)
    conn.info.setdefault(_QUEUED, []).append((directory, chain, head))


def append(directory: Path, chain: str, head: HeadRecord) -> None:
    """Append one head as a JSON line (one ``write`` on an ``O_APPEND`` file), fsynced."""
    directory.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(head_json(chain, head), sort_keys=True) + "\n").encode()
    fd = os.open(witness_file(directory), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(conn: Connection) -> None:
    if conn.info.get(_QUEUED):
        conn.info[_COMMITTING] = conn.info.pop(_QUEUED)


def _rollback(conn: Connection) -> None:
    conn.info.pop(_QUEUED, None)
    conn.info.pop(_COMMITTING, None)


def _error(context: Any) -> None:
    if context.connection is not None and not context.connection.closed:
        _rollback(context.connection)


def _checkin(_dbapi: Any, record: Any) -> None:
    if record is None:  # a detached connection: nothing was queued on a pool record
        return
    for directory, chain, head in record.info.pop(_COMMITTING, ()):
        try:
            append(directory, chain, head)
        except OSError as exc:  # never fail the region's write for its mirror; say so loudly
            log.error(
                "audit witness: head at seq %s not mirrored to %s: %s", head.seq, directory, exc
            )
    record.info.pop(_QUEUED, None)


def attach(engine: Engine) -> None:
    """Install the hooks on ``engine`` (once)."""
    if event.contains(engine, "commit", _commit):
        return
    event.listen(engine, "commit", _commit)
    event.listen(engine, "rollback", _rollback)
    event.listen(engine, "handle_error", _error)
    event.listen(engine.pool, "checkin", _checkin)
