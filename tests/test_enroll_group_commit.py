"""Group commit of enrollments (``enroll_many``, ``EnrollBatcher``): concurrent enrollments
share one transaction and one signed head, each keeps its own checks and audit event, and a
refused one writes nothing; on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from enroll_kit import setup_region
from sqlalchemy import func, select

from fedgate.crypto import generate_key, public_bytes
from fedgate.server.audit.keys import load_pubkeys, region_pub_path
from fedgate.server.audit.verify import verify_database
from fedgate.server.db.models import Device as DeviceRow
from fedgate.server.db.models import Event, SignedHead
from fedgate.server.trust.enroll_batch import EnrollBatcher
from fedgate.server.trust.enrollment import Device, EnrollmentError, EnrollOrder, region_registry

EVENTS, HEADS, DEVICES = Event.__table__, SignedHead.__table__, DeviceRow.__table__


@pytest.fixture
def region(tmp_path: Path, db_url: str):
    db = None if db_url.startswith("sqlite") else db_url
    setup_region(tmp_path, "eu", db)
    with region_registry(tmp_path, "eu", db, create=False) as registry:
        yield tmp_path, registry


def count(registry, table) -> int:
    with registry.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def chain_ok(home: Path, registry) -> None:
    report = verify_database(registry.store.engine, load_pubkeys([region_pub_path(home, "eu")]))
    assert report.ok, report.first


def test_one_transaction_each_refusal_its_own_and_nothing_written_for_it(region) -> None:
    home, registry = region
    key = public_bytes(generate_key())
    token, spent = registry.issue_token(), registry.issue_token()
    registry.enroll(spent, public_bytes(generate_key()))
    tokens = [registry.issue_token() for _ in range(4)]
    heads, events, devices = (count(registry, t) for t in (HEADS, EVENTS, DEVICES))
    orders = [
        EnrollOrder(token, key, "pi"),
        EnrollOrder(token, public_bytes(generate_key()), "pi"),  # the same token again
        EnrollOrder(spent, public_bytes(generate_key()), "phone"),  # used before
        EnrollOrder(tokens[0], key, "pi"),  # the key of the first order
        EnrollOrder(tokens[1], b"short", "pi"),
        EnrollOrder(tokens[2], public_bytes(generate_key()), "Bad Profile"),
        EnrollOrder("fgt_unknown", public_bytes(generate_key()), "pi"),
        EnrollOrder(tokens[3], public_bytes(generate_key()), "phone"),
    ]
    outcomes = registry.enroll_many(orders)
    reasons = [o.reason if isinstance(o, EnrollmentError) else "ok" for o in outcomes]
    assert reasons == ["ok", "token-used", "token-used", "key-registered", "bad-signing-key",
                       "bad-profile", "unknown-token", "ok"]  # fmt: skip
    enrolled = [o for o in outcomes if isinstance(o, Device)]
    assert [registry.get(d.device_id).profile for d in enrolled] == ["pi", "phone"]
    assert count(registry, DEVICES) == devices + 2
    assert count(registry, EVENTS) == events + 2  # one device.enrolled each, nothing else
    assert count(registry, HEADS) == heads + 2  # one per device event: an auditor needs it
    kinds = [e.kind for e in registry.store.audit.events(start=events + 1)]
    assert kinds == ["device.enrolled", "device.enrolled"]
    # the refused orders' tokens are still good
    assert registry.enroll(tokens[0], public_bytes(generate_key())).profile == ""
    chain_ok(home, registry)


def test_concurrent_callers_are_written_together_each_told_its_own_outcome(region) -> None:
    home, registry = region
    n = 12
    tokens = [registry.issue_token() for _ in range(n - 1)]
    orders = [EnrollOrder(t, public_bytes(generate_key()), "pi") for t in tokens]
    orders.append(EnrollOrder(tokens[0], public_bytes(generate_key()), "pi"))  # token reused
    heads = count(registry, HEADS)
    batcher = EnrollBatcher(registry)
    write = registry.enroll_many
    sizes: list[int] = []

    def held_first_write(batch):  # the first writer waits until everyone else has queued
        if not sizes:
            deadline = time.monotonic() + 30
            while len(batcher._pending) < n - 1 and time.monotonic() < deadline:
                time.sleep(0.01)
        sizes.append(len(batch))
        return write(batch)

    registry.enroll_many = held_first_write
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = batcher.enroll(orders[i])
        except EnrollmentError as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sizes == [1, n - 1] and batcher.batches == 2
    refused = [r for r in results.values() if isinstance(r, EnrollmentError)]
    assert len(results) == n and [r.reason for r in refused] == ["token-used"]
    ids = {r.device_id for r in results.values() if isinstance(r, Device)}
    assert len(ids) == n - 1 and all(registry.get(i) is not None for i in ids)
    assert count(registry, HEADS) == heads + n - 1
    chain_ok(home, registry)


def test_a_failed_transaction_fails_every_caller_of_its_batch(region) -> None:
    _, registry = region
    batcher = EnrollBatcher(registry)

    def broken(batch):
        raise RuntimeError("database went away")

    registry.enroll_many = broken
    with pytest.raises(RuntimeError, match="went away"):
        batcher.enroll(EnrollOrder(registry.issue_token(), public_bytes(generate_key()), "pi"))
    assert not batcher._writing and not batcher._pending
