"""Concurrent writers (threads and processes) never fork the chain, on both backends."""

from __future__ import annotations

import subprocess
import sys
import threading

from sqlalchemy import select

from fedgate.crypto import fingerprint, generate_key
from fedgate.server.audit import AuditLog, verify_database
from fedgate.server.audit.log import EVENTS
from fedgate.server.db import open_database, open_readonly

WRITERS, ROUNDS, BATCH = 4, 10, 5

WORKER = """
import sys
from fedgate.server.audit import AuditLog
from fedgate.server.db import open_database
url, who, rounds, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
log = AuditLog(open_database(url))
for r in range(rounds):
    log.append("test.single", {"who": who, "r": r})
    log.append_many([("test.batch", {"who": who, "r": r, "i": i}) for i in range(batch)])
"""


def _check(url: str, key=None) -> None:
    per_writer = ROUNDS * (1 + BATCH)
    with open_readonly(url).connect() as conn:
        seqs = conn.execute(select(EVENTS.c.seq).order_by(EVENTS.c.seq)).scalars().all()
    assert seqs == list(range(1, WRITERS * per_writer + 1))
    keys = {fingerprint(key): key.public_key()} if key else {}
    report = verify_database(open_readonly(url), keys)
    assert report.ok, report.problems[:5]


def test_threads_never_fork_the_chain(db_url: str) -> None:
    key = generate_key()
    engine = open_database(db_url)
    errors: list[BaseException] = []

    def writer(who: int) -> None:
        log = AuditLog(engine, signer=key)
        try:
            for r in range(ROUNDS):
                log.append("test.single", {"who": who, "r": r})
                log.append_many(
                    [("test.batch", {"who": who, "r": r, "i": i}) for i in range(BATCH)],
                    sign=r % 3 == 0,
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _check(db_url, key)


def test_processes_never_fork_the_chain(db_url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, db_url, str(w), str(ROUNDS), str(BATCH)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ]
    for p in procs:
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
    key = generate_key()  # the writers do not sign: attest the head they left
    AuditLog(open_database(db_url), signer=key).sign_head()
    _check(db_url, key)
