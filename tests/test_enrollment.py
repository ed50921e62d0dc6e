"""The region device registry: one-time tokens, enrollment, revocation, storage."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from fedgate.crypto import fingerprint, generate_key, public_bytes
from fedgate.server.enrollment import (
    REGISTRY_FILE,
    EnrollmentError,
    JsonDeviceRegistry,
    region_registry,
    token_hash,
)
from fedgate.server.nonces import ReplayGuard, RoundNonces


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(tmp_path: Path, clock: Clock) -> JsonDeviceRegistry:
    return JsonDeviceRegistry(tmp_path / "eu", "eu", clock=clock)


def test_enroll_registers_the_key(registry: JsonDeviceRegistry) -> None:
    key = generate_key()
    device = registry.enroll(registry.issue_token(), public_bytes(key), profile="pi")
    assert device.device_id == fingerprint(key)
    assert registry.get(device.device_id) == device
    assert (device.region, device.profile, device.revoked) == ("eu", "pi", False)
    assert registry.devices() == [device]


def test_tokens_are_single_use_and_stored_hashed(registry: JsonDeviceRegistry) -> None:
    token = registry.issue_token()
    text = registry.path.read_text()
    assert token not in text and token_hash(token) in text
    registry.enroll(token, public_bytes(generate_key()))
    with pytest.raises(EnrollmentError, match="already been used"):
        registry.enroll(token, public_bytes(generate_key()))
    assert len(registry.devices()) == 1


def test_expired_and_unknown_tokens_are_refused(registry: JsonDeviceRegistry, clock) -> None:
    token = registry.issue_token(ttl_seconds=60)
    clock.now += 61
    with pytest.raises(EnrollmentError, match="expired"):
        registry.enroll(token, public_bytes(generate_key()))
    with pytest.raises(EnrollmentError, match="unknown"):
        registry.enroll("fgt_not-a-token", public_bytes(generate_key()))
    with pytest.raises(EnrollmentError):
        registry.issue_token(ttl_seconds=0)
    assert registry.devices() == []


def test_a_refused_enrollment_keeps_the_token(registry: JsonDeviceRegistry) -> None:
    key = generate_key()
    registry.enroll(registry.issue_token(), public_bytes(key))
    token = registry.issue_token()
    with pytest.raises(EnrollmentError, match="already enrolled"):
        registry.enroll(token, public_bytes(key))
    with pytest.raises(EnrollmentError, match="Ed25519"):
        registry.enroll(token, b"short")
    registry.enroll(token, public_bytes(generate_key()))  # still good


def test_revocation_is_durable_and_blocks_re_enrollment(registry, tmp_path, clock) -> None:
    key = generate_key()
    device = registry.enroll(registry.issue_token(), public_bytes(key))
    clock.now += 5
    revoked = registry.revoke(device.device_id)
    assert revoked.revoked and revoked.revoked_at == clock.now
    clock.now += 5
    assert registry.revoke(device.device_id).revoked_at == revoked.revoked_at  # idempotent
    reopened = JsonDeviceRegistry(tmp_path / "eu", "eu")
    assert reopened.get(device.device_id).revoked
    with pytest.raises(EnrollmentError, match="revoked"):
        registry.enroll(registry.issue_token(), public_bytes(key))
    with pytest.raises(EnrollmentError, match="no device"):
        registry.revoke("0" * 64)


def test_a_running_server_sees_a_revocation_made_elsewhere(registry, tmp_path) -> None:
    device = registry.enroll(registry.issue_token(), public_bytes(generate_key()))
    server_view = JsonDeviceRegistry(tmp_path / "eu", "eu")
    assert not server_view.get(device.device_id).revoked
    JsonDeviceRegistry(tmp_path / "eu", "eu").revoke(device.device_id)
    assert server_view.get(device.device_id).revoked


def test_registry_file_is_private_and_bound_to_its_region(registry, tmp_path) -> None:
    registry.issue_token()
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600
    with pytest.raises(EnrollmentError, match="belongs to region 'eu'"):
        JsonDeviceRegistry(tmp_path / "eu", "us").devices()
    with pytest.raises(EnrollmentError, match="identifier"):
        JsonDeviceRegistry(tmp_path / "x", "../eu")


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        json.dumps({"format": "other"}),
        json.dumps({"format": "fedgate.devices/1", "region": "eu", "devices": {}}),
    ],
)
def test_corrupt_registry_files_raise_enrollment_errors(tmp_path: Path, content: str) -> None:
    (tmp_path / REGISTRY_FILE).write_text(content)
    with pytest.raises(EnrollmentError):
        JsonDeviceRegistry(tmp_path, "eu").devices()


def test_corrupt_device_entry_is_an_enrollment_error(tmp_path: Path) -> None:
    data = {"format": "fedgate.devices/1", "region": "eu", "tokens": {}}
    data["devices"] = {"ab": {"device_id": "ab", "public_key": "zz"}}
    (tmp_path / REGISTRY_FILE).write_text(json.dumps(data))
    with pytest.raises(EnrollmentError, match="corrupt"):
        JsonDeviceRegistry(tmp_path, "eu").get("ab")


def test_concurrent_enrollments_all_land(registry, tmp_path, clock) -> None:
    tokens = [registry.issue_token() for _ in range(8)]
    errors: list[Exception] = []

    def enroll(token: str) -> None:
        try:
            other = JsonDeviceRegistry(tmp_path / "eu", "eu", clock=clock)
            other.enroll(token, public_bytes(generate_key()))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=enroll, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(registry.devices()) == 8


def test_resolve_prefix(registry: JsonDeviceRegistry) -> None:
    device = registry.enroll(registry.issue_token(), public_bytes(generate_key()))
    assert registry.resolve(device.device_id[:10]) == device.device_id
    with pytest.raises(EnrollmentError, match="at least 8"):
        registry.resolve(device.device_id[:4])
    with pytest.raises(EnrollmentError, match="no device"):
        registry.resolve("zzzzzzzzzz")


def test_region_registry_lives_under_the_region_home(tmp_path: Path) -> None:
    reg = region_registry(tmp_path, "eu")
    assert reg.path == tmp_path / "regions" / "eu" / REGISTRY_FILE


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
