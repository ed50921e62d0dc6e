"""Who did it, signed: actor keys registered in the chain, signed requests for launches,
revocations, tokens and actor changes, refused when written and failed by `audit verify`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedgate.crypto import fingerprint, generate_key
from fedgate.server.audit.actors import (
    ActorCheck,
    ActorError,
    ActorRequest,
    config_digest,
    sign_request,
)
from fedgate.server.audit.store import Store
from fedgate.server.audit.verify import verify_database
from fedgate.server.trust.actors import (
    ActorUsageError,
    add_actor,
    admit_launch,
    ensure_local_operator,
    local_actor_key,
    operator_key_path,
    remove_actor,
    sign_launch,
)
from fedgate.server.trust.enrollment import DatabaseDeviceRegistry

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CONFIG = {"region": "eu", "rounds": 3, "lr": 0.1, "out-dir": "/runs/1"}


@dataclass
class Region:
    home: Path
    store: Store
    region_key: object
    operator: object
    approver: object

    @property
    def keys(self) -> dict:
        return {fingerprint(self.region_key): self.region_key.public_key()}

    def registry(self, key=None) -> DatabaseDeviceRegistry:
        return DatabaseDeviceRegistry(self.store, "eu", actor_key=key)

    def payloads(self) -> list[tuple[int, str, str]]:
        return [(e.seq, e.kind, e.payload) for e in self.store.audit.events()]


@pytest.fixture
def region(tmp_path: Path) -> Region:
    """Region eu with its local operator, an approver, a signed token, revocation and launch."""
    region_key = generate_key()
    store = Store.open(f"sqlite:///{tmp_path / 'eu.db'}", signer=region_key)
    assert ensure_local_operator(tmp_path, store, "eu") is not None
    assert ensure_local_operator(tmp_path, store, "eu") is None  # once
    operator, approver = local_actor_key(tmp_path), generate_key()
    add_actor(store, "eu", "alice", "approver", approver, operator)
    registry = DatabaseDeviceRegistry(store, "eu", actor_key=operator)
    device = generate_key()
    registry.enroll(registry.issue_token(), device.public_key().public_bytes_raw())
    registry.revoke(fingerprint(device), reason="lost")
    launch = admit_launch(store, "eu", CONFIG, sign_launch(operator, "eu", CONFIG), "root@vm")
    store.record_run(1, "eu", launch.launched_by, launch.config, launch.request)
    return Region(tmp_path, store, region_key, operator, approver)


def check(events: list[tuple[int, str, str]]) -> list[str]:
    acts = ActorCheck()
    return [str(p) for seq, kind, payload in events for p in acts.see(seq, kind, payload)]


def with_request(payload: str, request: ActorRequest | dict) -> str:
    raw = request.to_json() if isinstance(request, ActorRequest) else request
    return json.dumps({**json.loads(payload), "request": raw})


def seq_of(events: list[tuple[int, str, str]], kind: str) -> int:
    return next(seq for seq, k, _ in events if k == kind)


def test_an_honest_region_verifies_and_names_who_did_it(region: Region) -> None:
    assert operator_key_path(region.home).stat().st_mode & 0o777 == 0o600
    report = verify_database(region.store.engine, region.keys)
    assert report.ok, report.problems
    assert report.requests_checked == 4  # approver added, token, revocation, launch
    run = region.store.run(1)
    assert (
        run is not None
        and run.launched_by == f"local-operator ({fingerprint(region.operator)[:16]})"
    )
    launched = next(region.store.audit.events(kind="run.launched")).data
    assert "launch-request" not in launched["config"]
    assert launched["request"]["subject"] == config_digest(CONFIG)
    assert launched["request"]["actor"] == fingerprint(region.operator)


FIELDS = ["kind", "region", "subject", "issued_at", "nonce", "actor", "signature"]


@SETTINGS
@given(
    kind=st.sampled_from(["device.token_issued", "device.revoked", "run.launched", "actor.added"]),
    name=st.sampled_from(FIELDS),
    at=st.integers(0, 200),
    char=st.sampled_from("0af9Z-"),
)
def test_tampering_with_any_byte_of_a_request_fails_verify(
    region: Region, kind: str, name: str, at: int, char: str
) -> None:
    events = region.payloads()
    seq = [s for s, k, _ in events if k == kind][-1]
    payload = next(p for s, _, p in events if s == seq)
    request = json.loads(payload)["request"]
    value = request[name]
    i = at % len(value)
    if value[i] == char:
        char = "1" if char != "1" else "2"
    request[name] = value[:i] + char + value[i + 1 :]
    tampered = [(s, k, with_request(p, request) if s == seq else p) for s, k, p in events]
    problems = check(tampered)
    assert problems and all(p.startswith(f"event {seq}: {kind}") for p in problems), problems


def test_a_replayed_request_fails_verify_and_is_refused_when_written(region: Region) -> None:
    events = region.payloads()
    revoked = seq_of(events, "device.revoked")
    request = json.loads(dict((s, p) for s, _, p in events)[revoked])["request"]
    last = events[-1][0]
    again = json.dumps(
        {"device": request["subject"], "region": "eu", "reason": "", "request": request}
    )
    problems = check([*events, (last + 1, "device.revoked", again)])
    replayed = f"its request was already used by event {revoked} (replayed)"
    assert problems == [f"event {last + 1}: device.revoked: {replayed}"]
    signed = sign_launch(region.operator, "eu", CONFIG)
    admit_launch(region.store, "eu", CONFIG, signed, "x")  # not yet used: admitted
    launch = admit_launch(region.store, "eu", CONFIG, signed, "x")
    region.store.record_run(2, "eu", launch.launched_by, launch.config, launch.request)
    with pytest.raises(ActorError, match="already used by event"):
        admit_launch(region.store, "eu", CONFIG, signed, "x")


def test_unregistered_removed_and_wrong_role_keys_fail(region: Region) -> None:
    stranger = generate_key()
    events = region.payloads()
    token = seq_of(events, "device.token_issued")
    data = json.loads(dict((s, p) for s, _, p in events)[token])
    subject = data["token"]
    cases = {
        "not registered": sign_request(stranger, "device.token", "eu", subject),
        "an approver": sign_request(region.approver, "device.token", "eu", subject),
        "for region 'us'": sign_request(region.operator, "device.token", "us", subject),
        "a 'device.revoke' request": sign_request(region.operator, "device.revoke", "eu", subject),
        "names": sign_request(region.operator, "device.token", "eu", "0" * 16),
    }
    for why, request in cases.items():
        forged = [(s, k, with_request(p, request) if s == token else p) for s, k, p in events]
        problems = check(forged)
        assert len(problems) == 1 and why in problems[0], (why, problems)
    unsigned = [(s, k, json.dumps({**json.loads(p), "request": None}) if s == token else p)
                for s, k, p in events]  # fmt: skip
    assert "carries no signed request" in check(unsigned)[0]
    # removed: the operator's key signs nothing afterwards (the write is refused, too)
    remove_actor(region.store, "eu", "local-operator", region.operator)
    with pytest.raises(ActorError, match="not registered"):
        region.registry(region.operator).issue_token()
    later = sign_request(region.operator, "device.token", "eu", "f" * 16)
    last = region.payloads()[-1][0]
    after = json.dumps(
        {"region": "eu", "token": "f" * 16, "expires_at": "x", "request": later.to_json()}
    )
    problems = check([*region.payloads(), (last + 1, "device.token_issued", after)])
    assert problems and "not registered" in problems[0]


def test_writes_are_refused_without_an_operators_request(region: Region) -> None:
    with pytest.raises(ActorError, match="carries no signed request"):
        region.registry().issue_token()
    device = generate_key()
    operated = region.registry(region.operator)
    operated.enroll(operated.issue_token(), device.public_key().public_bytes_raw())
    with pytest.raises(ActorError, match="an approver"):
        region.registry(region.approver).revoke(fingerprint(device))
    with pytest.raises(ActorError, match="carries no signed request"):
        admit_launch(region.store, "eu", CONFIG, "", "root@vm")
    other = {**CONFIG, "rounds": 4}  # signed for another config
    with pytest.raises(ActorError, match="names"):
        admit_launch(region.store, "eu", other, sign_launch(region.operator, "eu", CONFIG), "x")
    with pytest.raises(ActorError, match="carries no signed request"):
        add_actor(region.store, "eu", "mallory", "operator", generate_key())
    seq = region.store.audit.head()[0]
    assert verify_database(region.store.engine, region.keys).ok  # nothing was written
    assert region.store.audit.head()[0] == seq


def test_a_region_key_holder_cannot_forge_an_act_past_verify(region: Region) -> None:
    """The region server signs heads, not requests: an act it appends on its own (signed
    head and all) fails verify at that event."""
    forged = sign_request(generate_key(), "device.revoke", "eu", "a" * 64)
    [event] = region.store.audit.append_many(
        [
            (
                "device.revoked",
                {"device": "a" * 64, "region": "eu", "reason": "", "request": forged.to_json()},
            )
        ],
        sign=True,
    )
    report = verify_database(region.store.engine, region.keys)
    assert [p.seq for p in report.problems] == [event.seq]
    assert "not registered" in str(report.problems[0])


def test_a_region_without_actors_keeps_unsigned_acts(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'old.db'}", signer=generate_key())
    registry = DatabaseDeviceRegistry(store, "eu")
    registry.issue_token()
    launch = admit_launch(store, "eu", CONFIG, "", "root@vm")
    assert launch.launched_by == "root@vm" and launch.request is None
    # a launcher that signs anyway (its home has an operator key): nothing to check it against
    signed = sign_launch(generate_key(), "eu", CONFIG)
    assert admit_launch(store, "eu", CONFIG, signed, "root@vm") == launch
    assert ActorCheck().see(1, "device.token_issued", next(store.audit.events()).payload) == []


def test_request_parsing_names_what_is_wrong() -> None:
    good = sign_request(generate_key(), "run.launch", "eu", "s").to_json()
    for bad in ("{", "[]", json.dumps({**good, "extra": "x"}), json.dumps({**good, "nonce": 7}),
                json.dumps({**good, "nonce": "zz"})):  # fmt: skip
        with pytest.raises(ActorError):
            ActorRequest.from_json(bad)
    assert ActorRequest.from_json(json.dumps(good)) == ActorRequest(**good)


@pytest.fixture
def cli(monkeypatch):
    from fedgate.server.cli.actors import register as register_actors
    from fedgate.server.cli.common import guard_every_verb
    from fedgate.server.cli.devices import register_region
    from fedgate.server.cli.pki import register as register_init

    monkeypatch.delenv("FEDGATE_DB", raising=False)
    app, region_app = typer.Typer(), typer.Typer()
    register_init(region_app)
    register_region(region_app)
    register_actors(region_app)
    app.add_typer(region_app, name="region")
    guard_every_verb(app)

    def run(*args: object, code: int = 0):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == code, result.output
        return result

    return run


def test_actor_verbs(cli, tmp_path: Path) -> None:
    home = ("--home", tmp_path)
    assert "registered as local-operator" in cli("region", "init", "--region", "eu", *home).stdout
    assert "kept" in cli("region", "init", "--region", "eu", *home).stdout
    cli("region", "actors", "keygen", "--out", tmp_path / "alice.key")
    pub = tmp_path / "alice.pubkey"
    cli("region", "actors", "add", "--region", "eu", "--role", "approver", "--name", "alice",
        "--pub", pub, *home)  # fmt: skip
    listed = json.loads(cli("region", "actors", "list", "--region", "eu", "--json", *home).stdout)
    assert [(a["name"], a["role"]) for a in listed] == [
        ("local-operator", "operator"),
        ("alice", "approver"),
    ]
    alice = ("--actor-key", tmp_path / "alice.key")
    out = cli("region", "enroll-token", "--region", "eu", *home, *alice, code=2).output
    assert "an approver" in out and "needs an operator" in out
    cli("region", "enroll-token", "--region", "eu", *home)  # the home's operator key
    bad_role = cli("region", "actors", "add", "--region", "eu", "--role", "boss", "--name", "bob",
                   "--pub", pub, *home, code=1)  # fmt: skip
    assert "unknown role 'boss'" in bad_role.output
    missing = cli("region", "actors", "remove", "alice", "--region", "eu", *home, "--actor-key",
                  tmp_path / "nope.key", code=1)  # fmt: skip
    assert "no actor key at" in missing.output
    cli("region", "actors", "remove", "alice", "--region", "eu", *home)
    listed = json.loads(cli("region", "actors", "list", "--region", "eu", "--json", *home).stdout)
    assert [a["name"] for a in listed] == ["local-operator"]


def test_the_launcher_signs_what_the_serverapp_reads_back(region: Region, tmp_path: Path) -> None:
    """The request travels in the run config through TOML (Flower's ``--run-config``) and
    names the digest of the ``RunSpec`` the ServerApp reads back; an edited setting fails."""
    import tomllib

    from fedgate.server.launch.config import default_federation
    from fedgate.server.launch.runner import run_config, signed_launch, to_toml
    from fedgate.server.region.run_spec import RunSpec

    fed = default_federation()
    config = {**run_config(fed, fed.region("eu"), region.home, tmp_path), "first-round": 2}
    sent = signed_launch(region.home, "eu", config)  # the home's operator key
    received = tomllib.loads(to_toml(sent))
    spec = RunSpec.from_run_config(received)
    launch = admit_launch(
        region.store, "eu", spec.to_run_config(), received["launch-request"], spec.launched_by
    )
    assert launch.launched_by.startswith("local-operator (")
    edited = RunSpec.from_run_config({**received, "rounds": 99}).to_run_config()
    with pytest.raises(ActorError, match="names"):
        admit_launch(region.store, "eu", edited, received["launch-request"], "x")
    with pytest.raises(ActorUsageError, match="no actor key at"):
        signed_launch(region.home, "eu", config, tmp_path / "missing.key")
