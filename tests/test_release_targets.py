"""Property tests of a release target's signed fields (``fedgate/release_targets.py``): they
survive TUF's canonical JSON, any malformed field is refused as ``MalformedRelease`` (never
another error), and any change to them breaks the targets role's signature."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from securesystemslib.formats import encode_canonical
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, TargetFile, Targets

from fedgate.crypto import generate_key
from fedgate.release_targets import MalformedRelease, Probe, ReleaseTarget, plain, target_path
from fedgate.statements import signer, trusted_key

names = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6,
)  # fmt: skip


@st.composite
def releases(draw: st.DrawFn) -> ReleaseTarget:
    rows = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inputs = (rng.integers(0, 17, (rows, 64)) / 16).astype(np.float32)
    classes = tuple(draw(st.lists(st.integers(0, 9), min_size=rows, max_size=rows)))
    return ReleaseTarget(
        draw(names), draw(names), draw(st.integers(1, 10**6)), draw(st.text("0123456789abcdef",
        min_size=64, max_size=64)), draw(names), (1, 64), Probe(inputs, classes),
        draw(st.sampled_from(["live", "held", "pinned"])), "2026-01-01T00:00:00+00:00",
        draw(st.dictionaries(names, json_values, max_size=4)),
    )  # fmt: skip


def _signed_targets(rel: ReleaseTarget) -> tuple[Metadata[Targets], Root]:
    key = generate_key()
    root = Root(expires=datetime.now(UTC) + timedelta(days=1))
    root.add_key(trusted_key(key), "targets")
    targets = Targets(expires=datetime.now(UTC) + timedelta(days=1))
    targets.targets[rel.path] = TargetFile(10, {"sha256": "0" * 64}, rel.path,
                                           {"custom": rel.to_custom()})  # fmt: skip
    md = Metadata(targets)
    md.sign(signer(key))
    return md, root


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(releases())
def test_a_release_survives_tuf_canonical_json(rel: ReleaseTarget) -> None:
    md, root = _signed_targets(rel)
    again = Metadata.from_bytes(md.to_bytes())
    root.verify_delegate("targets", again.signed_bytes, again.signatures)
    back = ReleaseTarget.from_custom(again.signed.targets[rel.path].custom)
    assert back.path == target_path(rel.region, rel.profile)
    assert (back.region, back.profile, back.global_version, back.lineage_digest, back.channel) == (
        rel.region, rel.profile, rel.global_version, rel.lineage_digest, rel.channel)  # fmt: skip
    assert np.array_equal(back.probe.inputs, rel.probe.inputs)
    assert back.probe.classes == rel.probe.classes
    assert back.student == plain(rel.student)
    encode_canonical(rel.to_custom())  # no floats anywhere: OLPC canonical JSON accepts it


FIELDS = ["region", "profile", "global_version", "lineage_digest", "input", "probe", "channel"]


@settings(max_examples=60, deadline=None)
@given(releases(), st.sampled_from(FIELDS), json_values)
def test_a_malformed_field_is_refused_as_malformed(
    rel: ReleaseTarget, field: str, value: Any
) -> None:
    custom = copy.deepcopy(rel.to_custom())
    custom["fedgate"][field] = value
    try:
        parsed = ReleaseTarget.from_custom(custom)
    except MalformedRelease as exc:
        assert "\n" not in str(exc)
        return
    assert getattr(parsed, field if field != "input" else "input_name") is not None


@settings(max_examples=30, deadline=None)
@given(releases(), st.data())
def test_a_tampered_probe_is_malformed_or_different(
    rel: ReleaseTarget, data: st.DataObject
) -> None:
    custom = copy.deepcopy(rel.to_custom())
    probe = custom["fedgate"]["probe"]
    text = probe["inputs_f32le"]
    i = data.draw(st.integers(0, len(text) - 1))
    probe["inputs_f32le"] = text[:i] + data.draw(st.sampled_from("A/+=!")) + text[i + 1 :]
    probe["rows"] = data.draw(st.sampled_from([probe["rows"], probe["rows"] + 1, 0]))
    try:
        got = ReleaseTarget.from_custom(custom).probe
    except MalformedRelease:
        return
    assert got.inputs.shape == rel.probe.inputs.shape


@settings(max_examples=30, deadline=None)
@given(releases(), st.sampled_from([*FIELDS, "student", "published_at"]), st.data())
def test_changing_any_signed_field_breaks_the_signature(
    rel: ReleaseTarget, field: str, data: st.DataObject
) -> None:
    md, root = _signed_targets(rel)
    doc = md.to_dict()
    custom = doc["signed"]["targets"][rel.path]["custom"]["fedgate"]
    replacement = data.draw(json_values.filter(lambda v: plain(v) != custom[field]))
    custom[field] = plain(replacement)
    forged = Metadata.from_dict(doc)
    with pytest.raises(UnsignedMetadataError):
        root.verify_delegate("targets", forged.signed_bytes, forged.signatures)


@pytest.mark.parametrize("bad", ["EU", "1eu", "e u", "", "x" * 40, "eu/us"])
def test_target_names_refuse_what_is_not_a_plain_name(bad: str) -> None:
    with pytest.raises(ValueError, match="name must be"):
        target_path(bad, "phone")
    with pytest.raises(ValueError, match="name must be"):
        target_path("eu", bad)
