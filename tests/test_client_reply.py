"""The device's signed reply: bound to the model whose instruction it verified."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord

from fedgate.clients.app import sign_reply
from fedgate.clients.device import Device
from fedgate.clients.device_view import listen, listening
from fedgate.crypto import fingerprint, generate_key
from fedgate.strategies.envelope import arrayrecord_digest
from fedgate.strategies.instruction import SIGNATURE_KEY, sign_instruction, verify_instruction


def test_the_reply_names_the_verified_model_and_the_update() -> None:
    server, key = generate_key(), generate_key()
    device = Device(key, fingerprint(key), "eu", server.public_key())
    rng = np.random.default_rng(1)
    base = ArrayRecord({"w": Array(rng.normal(size=(3, 2)).astype(np.float32))})
    update = ArrayRecord({"w": Array(rng.normal(size=(3, 2)).astype(np.float32))})
    config = {"region": "eu", "run-id": "r", "server-round": 2, "nonce": "ab" * 16}
    config[SIGNATURE_KEY] = sign_instruction(server, "train", arrayrecord_digest(base), config)
    instruction = verify_instruction(
        config, kind="train", model_digest=arrayrecord_digest(base),
        anchor=server.public_key(), region="eu",
    )  # fmt: skip
    record = sign_reply(device, instruction, base=base, arrays=update, metrics={"num-examples": 5})
    envelope = json.loads(record["envelope"])
    assert envelope["base_digest"] == arrayrecord_digest(base)
    assert envelope["arrays_digest"] == arrayrecord_digest(update)
    assert envelope["device_id"] == device.device_id


def test_listening_says_whether_anyone_listens() -> None:
    assert not listening()
    stop = listen(lambda kind, facts: None)
    try:
        assert listening()
    finally:
        stop()
    assert not listening()
