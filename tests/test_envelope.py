"""Update envelopes: a valid one verifies; each wrong claim is rejected with its reason code."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedgate.crypto import canonical_json, fingerprint, generate_key, public_bytes, sign
from fedgate.server.region.nonces import ReplayGuard, RoundNonces
from fedgate.server.trust.enrollment import DatabaseDeviceRegistry, region_registry
from fedgate.strategies.envelope import (
    Envelope,
    Reason,
    RejectedUpdate,
    arrayrecord_digest,
    build_envelope,
    open_envelope,
    pack_envelope,
    sign_envelope,
    sign_update,
    verify_envelope,
)

RUN = "run-1"
METRICS = {"train-loss": 0.25, "num-examples": 40}


def record_of(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


@dataclass
class World:
    """An enrolled eu device, the global model of round 3 and the device's honest update."""

    registry: DatabaseDeviceRegistry
    key: object
    nonces: RoundNonces
    base: ArrayRecord
    update: ArrayRecord

    def kwargs(self, **over: object) -> dict:
        kw = {
            "expected_region": "eu",
            "run_id": RUN,
            "server_round": 3,
            "nonce": self.nonces(3),
            "global_digest": arrayrecord_digest(self.base),
            "registry": self.registry,
            "metrics": dict(METRICS),
        }
        kw.update(over)
        return kw

    def envelope(self, **over: object) -> Envelope:
        env = build_envelope(
            region="eu",
            run_id=RUN,
            server_round=3,
            nonce=self.nonces(3),
            base_digest=arrayrecord_digest(self.base),
            device_id=fingerprint(self.key),
            num_examples=40,
            arrays=self.update,
            metrics=METRICS,
        )
        return replace(env, **over)

    def signed(self, env: Envelope | None = None, key: object = None) -> ConfigRecord:
        env = env or self.envelope()
        return pack_envelope(env, sign(key or self.key, env.canonical()))


def registry_of(home: Path, region: str) -> DatabaseDeviceRegistry:
    """``region``'s registry in its own SQLite database under ``home``."""
    return region_registry(home, region, db=f"sqlite:///{home / f'region-{region}.db'}")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    registry = registry_of(tmp_path, "eu")
    key = generate_key()
    registry.enroll(registry.issue_token(), public_bytes(key))
    rng = np.random.default_rng(0)
    base = record_of(w=rng.normal(size=(4, 3)).astype(np.float32), b=np.zeros(3, np.float32))
    update = record_of(w=rng.normal(size=(4, 3)).astype(np.float32), b=np.ones(3, np.float32))
    yield World(registry, key, RoundNonces(), base, update)
    registry.close()


def code_of(world: World, record: object, arrays: ArrayRecord | None = None, **over) -> str:
    with pytest.raises(RejectedUpdate) as info:
        open_envelope(record, world.update if arrays is None else arrays, **world.kwargs(**over))
    return info.value.code


def test_valid_envelope_verifies(world: World) -> None:
    record = sign_update(
        world.key,
        region="eu",
        run_id=RUN,
        server_round=3,
        nonce=world.nonces(3),
        base=world.base,
        arrays=world.update,
        metrics=METRICS,
    )
    assert verify_envelope(record, world.update, **world.kwargs()) == fingerprint(world.key)
    env = open_envelope(record, world.update, **world.kwargs())
    assert (env.round, env.num_examples, env.metrics) == (3, 40, METRICS)


def test_envelope_survives_flower_serialization(world: World) -> None:
    content = RecordDict({"arrays": world.update, "envelope": world.signed()})
    wire = recorddict_to_proto(content).SerializeToString()
    back = recorddict_from_proto(ProtoRecordDict.FromString(wire))
    got = verify_envelope(
        back.config_records["envelope"], back.array_records["arrays"], **world.kwargs()
    )
    assert got == fingerprint(world.key)


def test_signed_bytes_are_the_canonical_json(world: World) -> None:
    env = world.envelope()
    obj, signature = sign_envelope(world.key, env)
    record = world.signed(env)
    assert record["envelope"].encode() == canonical_json(obj) == env.canonical()
    assert record["signature"] == signature.hex()


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("region", "us", Reason.WRONG_REGION),
        ("run_id", "run-0", Reason.WRONG_RUN),
        ("round", 2, Reason.STALE_ROUND),
        ("round", 4, Reason.WRONG_ROUND),
        ("nonce", "ab" * 32, Reason.WRONG_NONCE),
        ("base_digest", "0" * 64, Reason.WRONG_BASE),
        ("arrays_digest", "1" * 64, Reason.DIGEST_MISMATCH),
        ("metrics", {"train-loss": 0.1, "num-examples": 40}, Reason.METRICS_MISMATCH),
    ],
)
def test_honestly_signed_wrong_claim_is_rejected(world, field, value, code) -> None:
    assert code_of(world, world.signed(world.envelope(**{field: value}))) == code


def test_tampered_fields_break_the_signature(world: World) -> None:
    record = world.signed()
    record["envelope"] = record["envelope"].replace('"round":3', '"round":4')
    assert code_of(world, record) == Reason.BAD_SIGNATURE


def test_changed_arrays_are_a_digest_mismatch(world: World) -> None:
    other = record_of(w=world.update["w"].numpy() + np.float32(1e-3), b=world.update["b"].numpy())
    assert code_of(world, world.signed(), arrays=other) == Reason.DIGEST_MISMATCH
    reordered = ArrayRecord({"b": world.update["b"], "w": world.update["w"]})
    assert code_of(world, world.signed(), arrays=reordered) == Reason.DIGEST_MISMATCH


def test_signature_by_another_key_is_rejected(world: World) -> None:
    assert code_of(world, world.signed(key=generate_key())) == Reason.BAD_SIGNATURE


def test_unknown_and_revoked_devices(world: World) -> None:
    stranger = generate_key()
    env = world.envelope(device_id=fingerprint(stranger))
    assert code_of(world, world.signed(env, stranger)) == Reason.UNKNOWN_DEVICE
    world.registry.revoke(fingerprint(world.key))
    assert code_of(world, world.signed()) == Reason.REVOKED


def test_device_of_another_region_is_refused(world: World, tmp_path: Path) -> None:
    us = registry_of(tmp_path, "us")
    record = world.signed()  # an honest eu update presented to the us server
    assert code_of(world, record, expected_region="us", registry=us) == Reason.WRONG_REGION
    # even if it claims to be for us, the us registry does not know the eu device
    env = world.envelope(region="us")
    assert code_of(world, world.signed(env), expected_region="us", registry=us) == (
        Reason.UNKNOWN_DEVICE
    )


@dataclass(frozen=True)
class Row:
    region: str
    public_key: bytes
    revoked: bool = False


def test_registry_row_of_another_region_or_key_is_refused(world: World) -> None:
    me = fingerprint(world.key)
    wrong_region = {me: Row("us", public_bytes(world.key))}
    assert code_of(world, world.signed(), registry=wrong_region) == Reason.WRONG_REGION
    swapped = {me: Row("eu", public_bytes(generate_key()))}  # key substituted in storage
    assert code_of(world, world.signed(), registry=swapped) == Reason.UNKNOWN_DEVICE


def test_missing_parts_are_unsigned(world: World) -> None:
    record = world.signed()
    assert code_of(world, None) == Reason.UNSIGNED
    assert code_of(world, ConfigRecord({"envelope": record["envelope"]})) == Reason.UNSIGNED
    assert code_of(world, ConfigRecord({"signature": record["signature"]})) == Reason.UNSIGNED


def test_non_canonical_or_unknown_version_envelopes(world: World) -> None:
    record = world.signed()
    spaced = ConfigRecord({**record, "envelope": record["envelope"].replace(":", ": ")})
    assert code_of(world, spaced) == Reason.MALFORMED
    upper = ConfigRecord({**record, "signature": record["signature"].upper()})
    assert code_of(world, upper) == Reason.MALFORMED
    obj = world.envelope().to_dict() | {"version": 2}
    v2 = pack_envelope(obj, sign(world.key, canonical_json(obj)))
    assert code_of(world, v2) == Reason.UNSUPPORTED_VERSION


def test_replay_and_duplicate_device(world: World) -> None:
    guard = ReplayGuard()
    record = world.signed()
    open_envelope(record, world.update, **world.kwargs(seen=guard))
    assert code_of(world, record, seen=guard) == Reason.REPLAY
    other_arrays = record_of(w=np.zeros((4, 3), np.float32), b=np.zeros(3, np.float32))
    second = world.signed(world.envelope(arrays_digest=arrayrecord_digest(other_arrays)))
    assert code_of(world, second, arrays=other_arrays, seen=guard) == Reason.DUPLICATE_DEVICE


def test_rejected_envelopes_do_not_block_the_device(world: World) -> None:
    """A forged envelope naming the device must not use up its slot in the replay guard."""
    guard = ReplayGuard()
    assert code_of(world, world.signed(key=generate_key()), seen=guard) == Reason.BAD_SIGNATURE
    assert code_of(world, world.signed(), arrays=world.base, seen=guard) == (Reason.DIGEST_MISMATCH)
    open_envelope(world.signed(), world.update, **world.kwargs(seen=guard))


def test_build_and_sign_refuse_out_of_spec_values(world: World) -> None:
    with pytest.raises(ValueError):
        build_envelope(
            region="eu",
            run_id=RUN,
            server_round=1,
            nonce="xyz",
            base_digest="0" * 64,
            device_id=fingerprint(world.key),
            num_examples=1,
            arrays=world.update,
        )
    for metrics in ({"loss": float("nan")}, {"loss": float("inf")}, {"num-examples": 2}):
        with pytest.raises(ValueError):
            build_envelope(
                region="eu",
                run_id=RUN,
                server_round=1,
                nonce="ab" * 32,
                base_digest="0" * 64,
                device_id=fingerprint(world.key),
                num_examples=1,
                arrays=world.update,
                metrics=metrics,
            )
    with pytest.raises(ValueError, match="fingerprint"):
        sign_envelope(generate_key(), world.envelope())


def test_sign_update_is_pack_of_sign_envelope(world: World) -> None:
    """``sign_update``'s one-pass record is the record of ``build_envelope``,
    ``sign_envelope`` and ``pack_envelope``; a base digest given is the base's digest."""
    facts = dict(region="eu", run_id=RUN, server_round=3, nonce=world.nonces(3))
    one_pass = sign_update(
        world.key, base=world.base, arrays=world.update, metrics=METRICS, **facts
    )
    given = sign_update(
        world.key, base=world.base, arrays=world.update, metrics=METRICS,
        base_digest=arrayrecord_digest(world.base), **facts,
    )  # fmt: skip
    apart = pack_envelope(*sign_envelope(world.key, world.envelope()))
    assert dict(one_pass) == dict(given) == dict(apart)
    assert verify_envelope(given, world.update, **world.kwargs()) == fingerprint(world.key)


def test_sign_update_refuses_out_of_spec_values_too(world: World) -> None:
    with pytest.raises(ValueError):
        sign_update(
            world.key, region="eu", run_id=RUN, server_round=3, nonce="not-hex",
            base=world.base, arrays=world.update, metrics=METRICS,
        )  # fmt: skip
