"""The region enrollment service over HTTPS on loopback (no Flower): a device enrolls from a
home of its own with one token; every refusal is a reason code and an audit event, and
leaves nothing else behind. Node keys are registered at a real SuperLink in
tests/test_net_enroll_live.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import httpx
import pytest
from enroll_kit import Served, serving, setup_region
from sqlalchemy import func, select

from fedgate.clients.enroll_client import (
    EnrollRefused,
    PinMismatch,
    _context,
    device_status,
    enroll_over_network,
)
from fedgate.clients.identity import read_enrollment
from fedgate.clients.node_key import new_node_key, node_public_line
from fedgate.crypto import generate_key, public_bytes, sha256_hex, sign
from fedgate.enrollment_wire import EnrollToken, TokenError, enroll_message, parse_token
from fedgate.server.db.models import Device as DeviceRow
from fedgate.server.db.models import EnrollmentToken
from fedgate.server.trust.enroll_run import network_token
from fedgate.server.trust.enrollment import region_registry


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("region-home")
    setup_region(home, "eu")
    setup_region(home, "us")
    return home


@pytest.fixture(scope="module")
def served(home: Path):
    with serving(home, "eu", rate=1000, burst=1000) as s:
        yield s


def refusals(s: Served) -> list[dict]:
    events = s.settings.registry.store.audit.events(kind="enrollment.refused")
    return [e.data for e in events]


def device_count(s: Served) -> int:
    with s.settings.registry.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(DeviceRow.__table__)).scalar_one()


def client(s: Served) -> httpx.Client:
    return httpx.Client(verify=_context(s.settings.ca_pem), timeout=10)


def signed_request(s: Served, token: EnrollToken, key=None, *, signer=None, **override) -> dict:
    """A well-formed enroll body for ``token`` (``signer``: sign with another key)."""
    key = key or generate_key()
    node = node_public_line(new_node_key())
    with client(s) as c:
        challenge = c.get(f"{s.url}/v1/challenge").json()["challenge"]
    facts = dict(region=token.region, secret_sha256=token.secret_sha256, challenge=challenge,
                 signing_key=public_bytes(key).hex(), node_key=node, profile="pi")  # fmt: skip
    body = {
        "region": token.region, "token": token.secret, "signing_key": facts["signing_key"],
        "node_key": node, "profile": "pi", "challenge": challenge,
        "proof": sign(signer or key, enroll_message(**facts)).hex(),
    }  # fmt: skip
    return {**body, **override}


def post(s: Served, body: dict | bytes, path: str = "/v1/enroll") -> httpx.Response:
    with client(s) as c:
        if isinstance(body, bytes):
            return c.post(f"{s.url}{path}", content=body,
                          headers={"content-type": "application/json"})  # fmt: skip
        return c.post(f"{s.url}{path}", json=body)


def test_a_device_enrolls_with_one_token_and_nothing_else(served: Served, tmp_path) -> None:
    device = tmp_path / "pi"  # a home of its own: no access to the region's files
    done = enroll_over_network(served.token(), "pi", device)
    e = read_enrollment(device)
    assert e == done.enrollment and e.region == "eu" and e.service == served.url
    assert e.fleet == served.settings.fleet_address
    for secret in ("device.key", "node-auth.key"):
        assert stat.S_IMODE((device / secret).stat().st_mode) == 0o600
    assert (device / "anchors" / "eu-ca.pem").read_bytes() == served.settings.ca_pem
    assert (device / "anchors" / "eu.pub").is_file()
    got = served.settings.registry.get(e.device_id)
    assert got is not None and not got.revoked and got.profile == "pi"
    enrolled = [ev.data for ev in served.settings.registry.store.audit.events(
        kind="device.enrolled") if ev.data["device"] == e.device_id]  # fmt: skip
    assert len(enrolled) == 1
    assert device_status(device)["status"] == "active"


def test_a_reused_token_is_refused(served: Served, tmp_path) -> None:
    token = served.token()
    enroll_over_network(token, "phone", tmp_path / "a")
    with pytest.raises(EnrollRefused) as refused:
        enroll_over_network(token, "phone", tmp_path / "b")
    assert refused.value.reason == "token-used" and refused.value.status == 409
    assert not (tmp_path / "b" / "device.key").exists()  # nothing half-written
    assert refusals(served)[-1]["reason"] == "token-used"


def test_an_expired_token_is_refused_by_the_device_and_by_the_region(
    served: Served, home: Path, tmp_path
) -> None:
    old = region_registry(home, "eu", create=False, clock=lambda: time.time() - 7200)
    secret = old.issue_token(60)  # expired an hour ago in the region's records
    old.close()
    stale = network_token(home, "eu", served.url, secret, time.time() - 10)
    with pytest.raises(TokenError, match="expired"):
        enroll_over_network(stale, "pi", tmp_path / "a")
    lying = network_token(home, "eu", served.url, secret, time.time() + 3600)
    with pytest.raises(EnrollRefused) as refused:
        enroll_over_network(lying, "pi", tmp_path / "b")
    assert refused.value.reason == "token-expired" and refused.value.status == 410


def test_forged_and_other_region_tokens_are_refused(served: Served, home: Path, tmp_path) -> None:
    forged = EnrollToken(served.url, parse_token(served.token()).ca_sha256, "eu",
                         time.time() + 600, "fgt_" + "F" * 43).encode()  # fmt: skip
    with pytest.raises(EnrollRefused) as refused:
        enroll_over_network(forged, "pi", tmp_path / "a")
    assert refused.value.reason == "unknown-token" and refused.value.status == 403
    us = region_registry(home, "us", create=False)
    us_secret = us.issue_token(600)
    us.close()
    other = network_token(home, "us", served.url, us_secret, time.time() + 600)
    with pytest.raises((EnrollRefused, PinMismatch)):  # the us CA is not the eu service's
        enroll_over_network(other, "pi", tmp_path / "b")
    pinned_eu = parse_token(served.token())
    as_eu = EnrollToken(served.url, pinned_eu.ca_sha256, "eu", time.time() + 600, us_secret)
    with pytest.raises(EnrollRefused) as refused:  # a us secret is unknown to eu
        enroll_over_network(as_eu.encode(), "pi", tmp_path / "c")
    assert refused.value.reason == "unknown-token"
    named_us = EnrollToken(served.url, pinned_eu.ca_sha256, "us", time.time() + 600, us_secret)
    with pytest.raises(EnrollRefused) as refused:
        enroll_over_network(named_us.encode(), "pi", tmp_path / "d")
    assert refused.value.reason == "wrong-region"


def test_a_wrong_ca_pin_stops_the_device_before_its_secret_leaves(served: Served, tmp_path) -> None:
    good = parse_token(served.token())
    before = len(refusals(served))
    wrong = EnrollToken(good.url, sha256_hex(b"another CA"), "eu", good.expires_at, good.secret)
    with pytest.raises(PinMismatch, match="token pins"):
        enroll_over_network(wrong.encode(), "pi", tmp_path / "a")
    assert len(refusals(served)) == before  # nothing was sent to enroll
    assert not (tmp_path / "a").exists()
    enroll_over_network(good.encode(), "pi", tmp_path / "b")  # the token was not spent


def test_a_failed_proof_of_possession_is_refused(served: Served) -> None:
    token = parse_token(served.token())
    res = post(served, signed_request(served, token, signer=generate_key()))
    assert res.status_code == 401 and res.json()["reason"] == "bad-proof"
    res = post(served, signed_request(served, token, profile="phone"))  # signed "pi"
    assert res.json()["reason"] == "bad-proof"
    assert refusals(served)[-1]["reason"] == "bad-proof"
    assert refusals(served)[-1]["token"] == token.secret_sha256[:16]


def test_a_challenge_works_once(served: Served) -> None:
    token = parse_token(served.token())
    body = signed_request(served, token)
    assert post(served, body).status_code == 201
    body2 = signed_request(served, parse_token(served.token()), challenge=body["challenge"])
    res = post(served, body2)
    assert res.json()["reason"] == "bad-challenge"


def test_an_already_registered_key_is_refused(served: Served) -> None:
    key = generate_key()
    assert post(served, signed_request(served, parse_token(served.token()), key)).is_success
    res = post(served, signed_request(served, parse_token(served.token()), key))
    assert res.status_code == 409 and res.json()["reason"] == "key-registered"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{" * 20000, 413, "body-too-large"),
        (b"{not json", 422, "malformed-request"),
        (b"[]", 422, "malformed-request"),
        (json.dumps({"token": "x"}).encode(), 422, "malformed-request"),
    ],
    ids=["oversize", "not-json", "not-an-object", "fields-missing"],
)
def test_oversize_and_malformed_bodies_are_refused(
    served: Served, body: bytes, status: int, reason: str
) -> None:
    devices, before = device_count(served), len(refusals(served))
    res = post(served, body)
    assert (res.status_code, res.json()["reason"]) == (status, reason)
    assert res.json()["detail"]
    assert len(refusals(served)) == before + 1 and device_count(served) == devices


def test_a_chunked_oversize_body_is_refused(served: Served) -> None:
    def chunks():
        for _ in range(40):
            yield b" " * 1024

    with client(served) as c:
        res = c.post(f"{served.url}/v1/enroll", content=chunks())
    assert (res.status_code, res.json()["reason"]) == (413, "body-too-large")


def test_status_says_active_revoked_or_unknown(served: Served, tmp_path) -> None:
    device = tmp_path / "d"
    done = enroll_over_network(served.token(), "pi", device)
    assert device_status(device)["status"] == "active"
    served.settings.registry.revoke(done.enrollment.device_id, reason="test")
    answer = device_status(device)
    assert answer["status"] == "revoked" and answer["revoked_at"]
    # a key the region never saw
    stranger = tmp_path / "stranger"
    enroll_over_network(served.token(), "pi", stranger)
    (stranger / "device.key").unlink()
    from fedgate.clients.identity import create_identity

    create_identity(stranger)
    assert device_status(stranger)["status"] == "unknown"
    # re-enrollment of the revoked device: a new token, new keys
    again = enroll_over_network(served.token(), "pi", device, force=True)
    assert again.enrollment.device_id != done.enrollment.device_id
    assert device_status(device)["status"] == "active"


def test_a_status_question_signed_by_another_key_is_refused(served: Served) -> None:
    key = generate_key()
    with client(served) as c:
        challenge = c.get(f"{served.url}/v1/challenge").json()["challenge"]
    body = {"region": "eu", "signing_key": public_bytes(key).hex(), "challenge": challenge,
            "proof": sign(generate_key(), b"whatever").hex()}  # fmt: skip
    res = post(served, body, "/v1/status")
    assert res.status_code == 401 and res.json()["reason"] == "bad-proof"


def test_the_rate_limit_refuses_a_flood_and_audits_it_once(home: Path) -> None:
    with serving(home, "eu", rate=0.01, burst=3) as s:
        before = len(refusals(s))
        with client(s) as c:
            codes = [c.get(f"{s.url}/v1/challenge").status_code for _ in range(8)]
        assert codes[:3] == [200] * 3 and set(codes[3:]) == {429}
        assert [r["reason"] for r in refusals(s)[before:]] == ["rate-limited"]


def test_the_token_string_holds_what_the_device_needs(served: Served, home: Path) -> None:
    token = parse_token(served.token(ttl=120))
    assert token.url == served.url and token.region == "eu"
    assert 100 < token.expires_at - time.time() <= 120
    from fedgate.server.trust.enroll_service import ca_der

    assert token.ca_sha256 == sha256_hex(ca_der(served.settings.ca_pem))
    with served.settings.registry.store.engine.connect() as conn:
        stored = conn.execute(select(EnrollmentToken.__table__.c.token_hash)).scalars().all()
    assert token.secret_sha256 in stored and token.secret not in stored


def test_nothing_of_the_region_is_readable_from_the_device_home(served: Served, tmp_path) -> None:
    device = tmp_path / "dev"
    enroll_over_network(served.token(), "phone", device)
    written = {str(p.relative_to(device)) for p in device.rglob("*") if p.is_file()}
    assert written == {
        "device.key", "device.pub", "node-auth.key", "node-auth.pub", "enrollment.json",
        "anchors/eu.pub", "anchors/eu-ca.pem",
    }  # fmt: skip
    assert os.path.commonpath([device, served.home]) != str(served.home)


def test_the_homes_release_repository_hands_out_its_newest_root(served: Served, tmp_path) -> None:
    """Without an operator copy for the region, the home's own release repository (set up after
    the service started, as in the demo) gives its newest root version."""
    metadata = served.home / "release" / "metadata"
    metadata.mkdir(parents=True, exist_ok=True)
    for version in (1, 2, 10):
        root = {"signed": {"_type": "root", "version": version}, "signatures": []}
        (metadata / f"{version}.root.json").write_text(json.dumps(root))
    (metadata / "timestamp.json").write_text("{}")
    try:
        assert enroll_over_network(served.token(), "pi", tmp_path / "d").release_root
        kept = json.loads((tmp_path / "d" / "anchors" / "eu-release-root.json").read_text())
        assert kept["signed"]["version"] == 10
    finally:
        shutil.rmtree(served.home / "release")


def test_release_root_metadata_comes_with_the_bundle_when_present(served: Served, tmp_path) -> None:
    root = served.home / "regions" / "eu" / "release" / "root.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text(json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []}))
    try:
        done = enroll_over_network(served.token(), "pi", tmp_path / "d")
        kept = json.loads((tmp_path / "d" / "anchors" / "eu-release-root.json").read_text())
        assert done.release_root and kept["signed"]["_type"] == "root"
        root.write_text("{broken")  # an unreadable file is not handed out, enrollment goes on
        assert not enroll_over_network(served.token(), "pi", tmp_path / "e").release_root
    finally:
        root.unlink()
