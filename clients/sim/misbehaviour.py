"""Signing faults a simulated device can be given, beside the model-poisoning attacks.

The attacks in ``fedgate.clients.sim.attacks`` change *what* a device sends; these change *how it
signs* it, to exercise the region server's envelope checks in real runs:

``wrong-key``  signs the envelope with a key other than its enrolled one while still naming its
               enrolled device id (an impersonator, or a device whose key was swapped): the server
               rejects it as ``bad-signature``.
``unsigned``   sends its update with no envelope at all: rejected as ``unsigned``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.clients.sim.attacks import ATTACKS
from fedgate.crypto import generate_key, sign

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord

SIGNING_FAULTS = ("wrong-key", "unsigned")


def known_profiles() -> tuple[str, ...]:
    """Every name a node may be given as its ``attack``."""
    return (*ATTACKS, *SIGNING_FAULTS)


@lru_cache(maxsize=1)
def _impostor_key() -> Ed25519PrivateKey:
    return generate_key()


def signed_reply(
    fault: str,
    key: Ed25519PrivateKey,
    device_id: str,
    *,
    region: str,
    run_id: str,
    server_round: int,
    nonce: str,
    base: ArrayRecord,
    arrays: ArrayRecord,
    metrics: Mapping[str, int | float],
) -> ConfigRecord | None:
    """The envelope record a device with signing ``fault`` ('' for none) attaches to its reply."""
    # heavy import (Flower): loaded when a device signs, not when a config names a profile
    from fedgate.strategies.envelope import (
        arrayrecord_digest,
        build_envelope,
        pack_envelope,
        sign_update,
    )

    round_facts = {"region": region, "run_id": run_id, "server_round": server_round, "nonce": nonce}
    if not fault:
        return sign_update(key, base=base, arrays=arrays, metrics=metrics, **round_facts)
    if fault == "unsigned":
        return None
    if fault == "wrong-key":
        envelope = build_envelope(
            **round_facts,
            base_digest=arrayrecord_digest(base),
            device_id=device_id,
            num_examples=int(metrics["num-examples"]),
            arrays=arrays,
            metrics=metrics,
        )
        return pack_envelope(envelope, sign(_impostor_key(), envelope.canonical()))
    raise ValueError(f"unknown signing fault {fault!r}; known: {', '.join(SIGNING_FAULTS)}")
