"""Property: any change to a regional artifact's weights, manifest or approval bytes is
refused by the coordinator (never accepted as the same or another valid candidate)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from coordinator_kit import bundle, make_fed
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.server.coordinator.candidates import Bundle, Expectation, screen
from fedgate.server.coordinator.federation import Federation, parse_federation

PARTS = ("manifest", "approval", "weights")
FEDERATION: Federation
GOOD: Bundle


@pytest.fixture(scope="module", autouse=True)
def _artifact(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One approved artifact of region eu, made by the region and gate code."""
    global FEDERATION, GOOD
    fed = make_fed(Path(tmp_path_factory.mktemp("fed")), "eu", "us")
    FEDERATION = parse_federation(tomllib.loads(fed.toml()))
    GOOD = bundle(fed.regions["eu"])


def _with(part: str, data: bytes) -> Bundle:
    if part == "manifest":
        return Bundle("x", data, GOOD.approvals, GOOD.weights)
    if part == "approval":
        return Bundle("x", GOOD.manifest, (data,), GOOD.weights)
    return Bundle("x", GOOD.manifest, GOOD.approvals, data)


def _bytes(part: str) -> bytes:
    return {"manifest": GOOD.manifest, "approval": GOOD.approvals[0], "weights": GOOD.weights}[part]


def _refused(b: Bundle) -> bool:
    accepted, refused = screen([b], FEDERATION, Expectation(0))
    return not accepted and len(refused) == 1


def test_the_untouched_bundle_is_accepted() -> None:
    accepted, refused = screen([GOOD], FEDERATION, Expectation(0))
    assert len(accepted) == 1 and refused == []


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(PARTS), st.data())
def test_any_changed_byte_is_refused(part: str, data: st.DataObject) -> None:
    original = _bytes(part)
    at = data.draw(st.integers(0, len(original) - 1), label="position")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != original[at]), label="byte")
    changed = original[:at] + bytes([new]) + original[at + 1 :]
    assert _refused(_with(part, changed))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(PARTS), st.data())
def test_truncated_or_extended_bytes_are_refused(part: str, data: st.DataObject) -> None:
    original = _bytes(part)
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(original) - 1), label="keep")
        changed = original[:cut]
    else:
        changed = original + data.draw(st.binary(min_size=1, max_size=16), label="tail")
    assert _refused(_with(part, changed))
