"""Device identity on disk (fedgate.clients.identity)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedgate.clients.identity import (
    KEY_FILE,
    PUB_FILE,
    Enrollment,
    IdentityError,
    create_identity,
    load_identity,
    load_or_create_identity,
    read_enrollment,
    read_trust_anchor,
    save_enrollment,
    save_trust_anchor,
)
from fedgate.crypto import fingerprint, generate_key, public_bytes, read_public_key


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
