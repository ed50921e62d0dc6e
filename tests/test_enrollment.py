"""The region device registry on the region database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, insert, select

from fedgate.crypto import fingerprint, generate_key, public_bytes
from fedgate.server.audit import verify_database
from fedgate.server.audit.keys import region_key_path
from fedgate.server.audit.store import Store
from fedgate.server.db import open_readonly
from fedgate.server.db.models import EnrollmentToken
from fedgate.server.region.nonces import ReplayGuard, RoundNonces
from fedgate.server.trust.enrollment import (
    DEVICES,
    TOKEN_ID_CHARS,
    DatabaseDeviceRegistry,
    Device,
    EnrollmentError,
    region_registry,
    token_hash,
)

TOKENS = EnrollmentToken.__table__


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_registry(db_url: str, clock: Clock) -> Callable[..., DatabaseDeviceRegistry]:
    """Registries on the test database, each with its own engine (as separate processes)."""
    made: list[DatabaseDeviceRegistry] = []

    def make(region: str = "eu", signer=None) -> DatabaseDeviceRegistry:
        made.append(DatabaseDeviceRegistry(Store.open(db_url, signer=signer), region, clock=clock))
        return made[-1]

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def registry(open_registry) -> DatabaseDeviceRegistry:
    return open_registry()


def run_together(jobs: list[Callable[[], object]]) -> list[object]:
    """Run ``jobs`` in threads released at once; each result is a value or an exception."""
    results: list[object] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_enroll_registers_the_key(registry: DatabaseDeviceRegistry, clock: Clock) -> None:
    key = generate_key()
    device = registry.enroll(registry.issue_token(), public_bytes(key), profile="pi")
    assert device.device_id == fingerprint(key)
    assert device.public_key == public_bytes(key)
    assert (device.region, device.profile, device.revoked) == ("eu", "pi", False)
    assert device.enrolled_at == clock.now
    assert registry.get(device.device_id) == device
    assert registry.devices() == [device]
    assert registry.get("0" * 64) is None


def test_tokens_are_single_use_and_only_their_hash_is_stored(registry) -> None:
    token = registry.issue_token()
    with registry.store.engine.connect() as conn:
        [row] = conn.execute(select(TOKENS)).all()
    assert row.token_hash == token_hash(token) and token not in str(tuple(row))
    device = registry.enroll(token, public_bytes(generate_key()))
    with pytest.raises(EnrollmentError, match="already been used"):
        registry.enroll(token, public_bytes(generate_key()))
    assert registry.devices() == [device]
    with registry.store.engine.connect() as conn:
        used = conn.execute(select(TOKENS)).one()
    assert (used.used_by, used.used_at is not None) == (device.device_id, True)


def test_expired_unknown_and_bad_tokens_are_refused(registry, clock) -> None:
    token = registry.issue_token(ttl_seconds=60)
    clock.now += 60
    with pytest.raises(EnrollmentError, match="expired"):
        registry.enroll(token, public_bytes(generate_key()))
    with pytest.raises(EnrollmentError, match="unknown enrollment token for region eu"):
        registry.enroll("fgt_not-a-token", public_bytes(generate_key()))
    for ttl in (0, -1, 31 * 24 * 3600, float("nan")):
        with pytest.raises(EnrollmentError, match="lifetime"):
            registry.issue_token(ttl_seconds=ttl)
    assert registry.devices() == []


def test_a_refused_enrollment_keeps_the_token(registry) -> None:
    key = generate_key()
    registry.enroll(registry.issue_token(), public_bytes(key))
    token = registry.issue_token()
    with pytest.raises(EnrollmentError, match="already enrolled here"):
        registry.enroll(token, public_bytes(key))
    with pytest.raises(EnrollmentError, match="Ed25519"):
        registry.enroll(token, b"short")
    with pytest.raises(EnrollmentError, match="profile"):
        registry.enroll(token, public_bytes(generate_key()), profile="Not A Profile")
    registry.enroll(token, public_bytes(generate_key()))  # still good
    assert len(registry.devices()) == 2


def test_revocation_is_durable_idempotent_and_blocks_re_enrollment(
    open_registry, registry, clock
) -> None:
    key = generate_key()
    device = registry.enroll(registry.issue_token(), public_bytes(key))
    clock.now += 5
    revoked = registry.revoke(device.device_id, reason="lost")
    assert revoked.revoked and revoked.revoked_at == clock.now
    events = len(list(registry.store.audit.events()))
    clock.now += 5
    assert registry.revoke(device.device_id) == revoked  # the first time stays
    assert len(list(registry.store.audit.events())) == events  # and nothing is logged again
    assert open_registry().get(device.device_id) == revoked
    with pytest.raises(EnrollmentError, match="already revoked"):
        registry.enroll(registry.issue_token(), public_bytes(key))
    with pytest.raises(EnrollmentError, match="no device"):
        registry.revoke("0" * 64)


def test_a_running_server_sees_a_revocation_made_elsewhere(open_registry, registry) -> None:
    device = registry.enroll(registry.issue_token(), public_bytes(generate_key()))
    server_view = open_registry()
    assert not server_view.get(device.device_id).revoked
    open_registry().revoke(device.device_id)
    assert server_view.get(device.device_id).revoked


def test_every_write_is_audited_without_the_secret(open_registry, db_url: str) -> None:
    signer = generate_key()
    registry = open_registry(signer=signer)
    token = registry.issue_token()
    device = registry.enroll(token, public_bytes(generate_key()), profile="phone")
    registry.revoke(device.device_id, reason="stolen")
    events = list(registry.store.audit.events())
    assert [e.kind for e in events] == ["device.token_issued", "device.enrolled", "device.revoked"]
    tid = token_hash(token)[:TOKEN_ID_CHARS]
    issued, enrolled, revoked = (e.data for e in events)
    assert issued["token"] == tid and issued["region"] == "eu"
    assert enrolled == {
        "device": device.device_id,
        "region": "eu",
        "profile": "phone",
        "public_key": device.public_key.hex(),
        "token": tid,
    }
    assert revoked == {"device": device.device_id, "region": "eu", "reason": "stolen"}
    for e in events:
        assert token not in e.payload and token_hash(token) not in e.payload
    report = verify_database(open_readonly(db_url), {fingerprint(signer): signer.public_key()})
    assert report.ok, report.problems
    assert report.events == 3 and report.unsigned_tail == 0


def test_a_failed_write_leaves_neither_rows_nor_events(registry) -> None:
    key = generate_key()
    registry.enroll(registry.issue_token(), public_bytes(key))
    before = [e.kind for e in registry.store.audit.events()]
    with pytest.raises(EnrollmentError):
        registry.enroll(registry.issue_token(), public_bytes(key))
    after = [e.kind for e in registry.store.audit.events()]
    assert after == [*before, "device.token_issued"]  # the second token, nothing else


def test_two_enrollments_with_one_token_exactly_one_wins(open_registry) -> None:
    token = open_registry().issue_token()
    keys = [generate_key() for _ in range(6)]
    registries = [open_registry() for _ in keys]
    results = run_together(
        [
            lambda r=r, k=k: r.enroll(token, public_bytes(k))
            for r, k in zip(registries, keys, strict=True)
        ]
    )
    winners = [r for r in results if isinstance(r, Device)]
    losers = [r for r in results if not isinstance(r, Device)]
    assert len(winners) == 1, results
    assert all(isinstance(e, EnrollmentError) and "already been used" in str(e) for e in losers), (
        losers
    )
    assert registries[0].devices() == winners
    kinds = [e.kind for e in registries[0].store.audit.events()]
    assert kinds == ["device.token_issued", "device.enrolled"]


def test_one_key_enrolled_twice_at_once_lands_once(open_registry) -> None:
    key = public_bytes(generate_key())
    registries = [open_registry() for _ in range(4)]
    tokens = [r.issue_token() for r in registries]
    results = run_together(
        [lambda r=r, t=t: r.enroll(t, key) for r, t in zip(registries, tokens, strict=True)]
    )
    assert sum(isinstance(r, Device) for r in results) == 1, results
    errors = [r for r in results if not isinstance(r, Device)]
    assert all(isinstance(e, EnrollmentError) and "already" in str(e) for e in errors), errors
    assert len(registries[0].devices()) == 1


def test_concurrent_enrollments_with_their_own_tokens_all_land(open_registry) -> None:
    registries = [open_registry() for _ in range(6)]
    tokens = [r.issue_token() for r in registries]
    results = run_together(
        [
            lambda r=r, t=t: r.enroll(t, public_bytes(generate_key()))
            for r, t in zip(registries, tokens, strict=True)
        ]
    )
    assert all(isinstance(r, Device) for r in results), results
    assert len(registries[0].devices()) == 6
    report = verify_database(registries[0].store.engine, None)
    assert report.ok and report.events == 12


def test_get_is_one_query(registry) -> None:
    device = registry.enroll(registry.issue_token(), public_bytes(generate_key()))
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(statement.strip().split()[0].upper())

    event.listen(registry.store.engine, "before_cursor_execute", seen)
    try:
        assert registry.get(device.device_id) == device
    finally:
        event.remove(registry.store.engine, "before_cursor_execute", seen)
    assert [s for s in statements if s != "BEGIN"] == ["SELECT"]


def test_resolve_prefix(registry) -> None:
    device = registry.enroll(registry.issue_token(), public_bytes(generate_key()))
    assert registry.resolve(device.device_id[:10].upper()) == device.device_id
    assert registry.resolve(device.device_id) == device.device_id
    with pytest.raises(EnrollmentError, match="at least 8"):
        registry.resolve(device.device_id[:4])
    for junk in ("zzzzzzzzzz", "%%%%%%%%", "________"):
        with pytest.raises(EnrollmentError, match="no device"):
            registry.resolve(junk)


def insert_device(registry: DatabaseDeviceRegistry, device_id: str, public_key: str) -> None:
    """A devices row written behind the registry's back (as a broken or forged table would)."""
    row = {
        "device_id": device_id,
        "public_key": public_key,
        "region": registry.region,
        "status": "active",
        "enrolled_at": datetime.now(UTC),
        "profile": "",
    }
    with registry.store.engine.begin() as conn:
        conn.execute(insert(DEVICES).values(**row))


def test_resolve_refuses_an_ambiguous_prefix(registry) -> None:
    for tail in ("0", "1"):
        insert_device(registry, "abcdef01" + tail * 56, public_bytes(generate_key()).hex())
    with pytest.raises(EnrollmentError, match="more than one device"):
        registry.resolve("abcdef01")
    assert registry.resolve("abcdef011") == "abcdef01" + "1" * 56


def test_corrupt_device_row_is_an_enrollment_error(registry) -> None:
    insert_device(registry, "ab" * 32, "zz")
    with pytest.raises(EnrollmentError, match="corrupt device row"):
        registry.get("ab" * 32)


def test_residency_in_a_shared_database(open_registry) -> None:
    """Two regions in one database ($FEDGATE_DB): each sees only its own devices and tokens."""
    eu, us = open_registry("eu"), open_registry("us")
    key = public_bytes(generate_key())
    device = eu.enroll(eu.issue_token(), key)
    assert us.get(device.device_id) is None and us.devices() == []
    with pytest.raises(EnrollmentError, match="already enrolled in region eu"):
        us.enroll(us.issue_token(), key)
    with pytest.raises(EnrollmentError, match="unknown enrollment token for region eu"):
        eu.enroll(us.issue_token(), public_bytes(generate_key()))
    with pytest.raises(EnrollmentError, match="no device"):
        us.revoke(device.device_id)
    with pytest.raises(EnrollmentError, match="no device"):
        us.resolve(device.device_id[:12])
    assert not eu.get(device.device_id).revoked


def test_region_registry_opens_the_region_database(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FEDGATE_DB", raising=False)
    with region_registry(tmp_path, "eu") as registry:
        device = registry.enroll(registry.issue_token(), public_bytes(generate_key()))
        assert registry.url == f"sqlite:///{tmp_path.resolve()}/region-eu.db"
        assert registry.store.audit.signer is not None
    assert region_key_path(tmp_path, "eu").is_file()
    with region_registry(tmp_path, "eu") as again:
        assert again.get(device.device_id) == device
    with region_registry(tmp_path, "us") as us:  # another region: another database
        assert us.devices() == [] and "region-us.db" in us.url
    with pytest.raises(EnrollmentError, match="identifier"):
        region_registry(tmp_path, "../eu")


def test_region_registry_follows_fedgate_db(db_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEDGATE_DB", db_url)
    with region_registry(tmp_path, "eu") as registry:
        device = registry.enroll(registry.issue_token(), public_bytes(generate_key()))
    assert not (tmp_path / "region-eu.db").exists()
    monkeypatch.delenv("FEDGATE_DB")
    with region_registry(tmp_path / "elsewhere", "eu", db=db_url) as registry:
        assert registry.get(device.device_id) == device


def test_round_nonces_are_fresh_per_round_and_stable() -> None:
    nonces = RoundNonces()
    assert nonces(1) == nonces.for_round(1) != nonces(2)
    assert len(nonces(1)) == 64 and RoundNonces()(1) != nonces(1)


def test_replay_guard_remembers_and_forgets_old_rounds() -> None:
    guard = ReplayGuard(keep_rounds=2)
    assert guard.remember("d", "r", 1, "x") is None
    assert guard.remember("d", "r", 1, "y") == "x"
    assert guard.remember("d", "other-run", 1, "y") is None
    assert guard.remember("d", "r", 2, "z") is None
    assert guard.remember("d", "r", 3, "z") is None
    assert ("r", 1) not in guard._seen and ("other-run", 1) in guard._seen
