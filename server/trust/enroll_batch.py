"""Group commit for the enrollment service: concurrent enrollments share one transaction.

Every enrollment appends an audit event and signs the chain head, under the chain's write
lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``SELECT ... FOR UPDATE`` of ``audit_chain``),
so enrollments in separate transactions queue on that lock: one transaction's dozen round
trips and its commit (an fsync) each, which on a busy PostgreSQL host made 1,000 devices
take two minutes. Here the first caller to find no write under way becomes the writer: it
takes every order waiting (up to ``max_batch``) and writes them with
``DatabaseDeviceRegistry.enroll_many`` (one transaction, one append, one signed head); the
callers who arrived meanwhile wait for it, and one of those whose order is still pending
writes the next batch. A lone caller writes its own order at once; nothing runs in the
background. Each caller gets its own ``Device`` or its own ``EnrollmentError``.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from fedgate.server.trust.enrollment import (
    DatabaseDeviceRegistry,
    Device,
    EnrollmentError,
    EnrollOrder,
)

MAX_BATCH = 64


class EnrollBatcher:
    """``enroll`` as ``registry.enroll``, with concurrent callers written together."""

    def __init__(self, registry: DatabaseDeviceRegistry, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.registry, self.max_batch = registry, max_batch
        self._pending: list[tuple[EnrollOrder, Future[Device]]] = []
        self._writing = False
        self._cond = threading.Condition()
        self.batches = 0  # transactions written (for benchmarks and tests)

    def enroll(self, order: EnrollOrder) -> Device:
        """Enroll ``order`` (in a batch with whoever else is waiting); raises its
        ``EnrollmentError``, or the database's error should the whole transaction fail."""
        done: Future[Device] = Future()
        with self._cond:
            self._pending.append((order, done))
        while not done.done():
            with self._cond:
                while self._writing and not done.done():
                    self._cond.wait()
                if done.done():
                    break
                self._writing = True
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
        return done.result()

    def _write(self, batch: list[tuple[EnrollOrder, Future[Device]]]) -> None:
        """Write ``batch``, settle every future in it (re-raises only non-``Exception``s)."""
        self.batches += 1
        try:
            outcomes = self.registry.enroll_many([order for order, _ in batch])
        except BaseException as exc:  # handed to every caller of the batch
            for _, future in batch:
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, EnrollmentError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
