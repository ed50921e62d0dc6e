"""The shared formats: every pattern is whole-string, lowercase only, of the stated length."""

from __future__ import annotations

import pytest

from fedgate.formats import HEX64_RE, NONCE_RE, SIGNATURE_RE, is_hex64


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("ab" * 32, True),
        ("0" * 64, True),
        ("AB" * 32, False),  # uppercase is a different string, so a different digest
        ("ab" * 32 + "\n", False),  # ``$`` would accept a trailing newline; ``\Z`` does not
        ("ab" * 32 + "0", False),
        ("ab" * 31 + "a", False),
        ("g" * 64, False),
        (b"ab" * 32, False),
        (None, False),
    ],
)
def test_is_hex64(value: object, ok: bool) -> None:
    assert is_hex64(value) is ok


def test_match_and_fullmatch_agree_on_every_pattern() -> None:
    for pattern, good in ((HEX64_RE, "cd" * 32), (NONCE_RE, "cd" * 16), (SIGNATURE_RE, "cd" * 64)):
        assert pattern.match(good) and pattern.fullmatch(good)
        assert not pattern.match(good + "cd" * 64) and not pattern.fullmatch(good + "cd" * 64)


@pytest.mark.parametrize(("size", "ok"), [(15, False), (16, True), (64, True), (65, False)])
def test_nonce_is_16_to_64_bytes_of_hex(size: int, ok: bool) -> None:
    assert (NONCE_RE.match("7f" * size) is not None) is ok
    assert NONCE_RE.match("7f" * size + "7") is None  # an odd number of digits is no bytes
