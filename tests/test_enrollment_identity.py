"""Device identity on disk and the device side of enrollment (fedgate.clients.identity)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedgate.clients.identity import (
    KEY_FILE,
    PUB_FILE,
    Enrollment,
    IdentityError,
    check_profile,
    create_identity,
    enroll_identity,
    load_identity,
    load_or_create_identity,
    read_enrollment,
    read_trust_anchor,
    save_enrollment,
    save_trust_anchor,
)
from fedgate.crypto import (
    fingerprint,
    generate_key,
    load_public_key,
    public_bytes,
    read_public_key,
)
from fedgate.server.audit.keys import region_pub_path
from fedgate.server.trust.enrollment import enroll_device_dir, region_registry, revoke_device


def test_create_writes_a_private_key_and_its_public_half(tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "dev")
    assert stat.S_IMODE((tmp_path / "dev" / KEY_FILE).stat().st_mode) == 0o600
    assert public_bytes(read_public_key(tmp_path / "dev" / PUB_FILE)) == ident.public_key
    assert ident.device_id == fingerprint(ident.key)
    assert load_identity(tmp_path / "dev").device_id == ident.device_id


def test_existing_key_is_never_replaced_without_force(tmp_path: Path) -> None:
    first = create_identity(tmp_path)
    with pytest.raises(FileExistsError, match="--force"):
        create_identity(tmp_path)
    assert load_identity(tmp_path).device_id == first.device_id
    second = create_identity(tmp_path, force=True)
    assert load_identity(tmp_path).device_id == second.device_id != first.device_id


def test_load_or_create(tmp_path: Path) -> None:
    made, created = load_or_create_identity(tmp_path)
    again, created_again = load_or_create_identity(tmp_path)
    assert (created, created_again) == (True, False)
    assert made.device_id == again.device_id


def test_load_refuses_missing_open_or_mismatched_keys(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no device key"):
        load_identity(tmp_path)
    create_identity(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o600)
    (tmp_path / PUB_FILE).write_text(public_bytes(generate_key()).hex())
    with pytest.raises(IdentityError, match="does not belong"):
        load_identity(tmp_path)
    (tmp_path / KEY_FILE).write_text("garbage")
    with pytest.raises(IdentityError):
        load_identity(tmp_path)


def test_enrollment_and_trust_anchor_round_trip(tmp_path: Path) -> None:
    assert read_enrollment(tmp_path) is None
    save_enrollment(tmp_path, Enrollment("eu", "ab" * 32, "pi"))
    assert read_enrollment(tmp_path) == Enrollment("eu", "ab" * 32, "pi")
    anchor = generate_key()
    save_trust_anchor(tmp_path, "eu", anchor.public_key())
    assert public_bytes(read_trust_anchor(tmp_path, "eu")) == public_bytes(anchor)
    with pytest.raises(IdentityError, match="no trust anchor"):
        read_trust_anchor(tmp_path, "us")
    (tmp_path / "enrollment.json").write_text("{")
    with pytest.raises(IdentityError, match="corrupt"):
        read_enrollment(tmp_path)


class Region:
    """A stand-in region that records what it was asked to register."""

    def __init__(self, answer: str | None = None) -> None:
        self.keys: list[bytes] = []
        self.answer = answer

    def __call__(self, public_key: bytes) -> str:
        self.keys.append(public_key)
        return self.answer or fingerprint(load_public_key(public_key))


def test_enroll_identity_makes_the_key_only_after_registration(tmp_path: Path) -> None:
    anchor = generate_key().public_key()
    region = Region()
    done = enroll_identity(tmp_path / "dev", "eu", "pi", anchor, region)
    assert done.new_key and done.replaced is None
    assert region.keys == [done.identity.public_key]
    assert load_identity(tmp_path / "dev").device_id == done.identity.device_id
    assert stat.S_IMODE((tmp_path / "dev" / KEY_FILE).stat().st_mode) == 0o600
    assert read_enrollment(tmp_path / "dev") == Enrollment("eu", done.identity.device_id, "pi")
    assert public_bytes(read_trust_anchor(tmp_path / "dev", "eu")) == public_bytes(anchor)
    assert done.anchor_path == tmp_path / "dev" / "anchors" / "eu.pub"

    def refuse(public_key: bytes) -> str:
        raise ValueError("token refused")

    with pytest.raises(ValueError, match="token refused"):
        enroll_identity(tmp_path / "other", "eu", "pi", anchor, refuse)
    assert not (tmp_path / "other" / KEY_FILE).exists()
    assert read_enrollment(tmp_path / "other") is None


def test_enroll_identity_keeps_an_existing_key(tmp_path: Path) -> None:
    mine = create_identity(tmp_path)
    done = enroll_identity(tmp_path, "eu", "phone", generate_key().public_key(), Region())
    assert not done.new_key and done.identity.device_id == mine.device_id


def test_enroll_identity_refuses_a_second_region_without_force(tmp_path: Path) -> None:
    anchor = generate_key().public_key()
    first = enroll_identity(tmp_path, "eu", "pi", anchor, Region())
    region = Region()
    with pytest.raises(IdentityError, match="already enrolled in region eu"):
        enroll_identity(tmp_path, "us", "pi", anchor, region)
    with pytest.raises(IdentityError, match="already enrolled in this region"):
        enroll_identity(tmp_path, "eu", "pi", anchor, region)
    assert region.keys == [] and load_identity(tmp_path).device_id == first.identity.device_id
    moved = enroll_identity(tmp_path, "us", "pi", anchor, region, force=True)
    assert moved.new_key and moved.identity.device_id != first.identity.device_id
    assert moved.replaced == first.enrollment
    assert read_enrollment(tmp_path).region == "us"


def test_enroll_identity_checks_profile_and_the_region_answer(tmp_path: Path) -> None:
    anchor = generate_key().public_key()
    with pytest.raises(IdentityError, match="unknown profile 'tablet'"):
        enroll_identity(tmp_path, "eu", "tablet", anchor, Region())
    with pytest.raises(IdentityError, match="recorded device"):
        enroll_identity(tmp_path, "eu", "pi", anchor, Region(answer="ab" * 32))
    assert not (tmp_path / KEY_FILE).exists() and read_enrollment(tmp_path) is None
    assert check_profile("phone") == "phone"


def test_enroll_device_dir_and_revoke_device(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FEDGATE_DB", raising=False)
    home = tmp_path / "home"
    device = enroll_device_dir(home, "eu", tmp_path / "dev", "pi")
    assert device.device_id == load_identity(tmp_path / "dev").device_id
    assert (device.region, device.profile, device.revoked) == ("eu", "pi", False)
    anchor = read_trust_anchor(tmp_path / "dev", "eu")
    assert public_bytes(anchor) == public_bytes(read_public_key(region_pub_path(home, "eu")))
    with pytest.raises(IdentityError, match="already enrolled"):
        enroll_device_dir(home, "us", tmp_path / "dev", "pi")
    revoked = revoke_device(home, "eu", device.device_id[:10], reason="test")
    assert revoked.revoked and revoked.device_id == device.device_id
    with region_registry(home, "eu") as registry:
        assert registry.get(device.device_id).revoked
        kinds = [e.kind for e in registry.store.audit.events()]
    assert kinds == ["device.token_issued", "device.enrolled", "device.revoked"]
