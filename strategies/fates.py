"""What happened to one client's update in one round, and the round-level Flower errors that
are no client's fate: the records the screens (``envelope``) and the strategy
(``robust_strategy``) fill in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClientFate:
    """What happened to one client's update in one round.

    ``device_id`` is set only once the device's signature verified (accepted updates);
    ``claimed_device_id`` is the device id the reply's envelope names, verified or not (empty
    when the reply carries no readable envelope), so a refused update still says which
    enrolled device it claims to come from.
    """

    node_id: int
    accepted: bool
    reason: str = ""  # rejection reason code, empty when accepted
    detail: str = ""
    device_id: str = ""
    digest: str = ""  # canonical digest of the arrays received
    num_examples: int = 0
    fate: str = ""  # aggregator decision: kept / trimmed / clipped / down-weighted / dropped
    score: float | None = None
    weight: float = 0.0
    claimed_device_id: str = ""  # what the envelope claims; unverified unless == device_id


@dataclass(frozen=True)
class TransportError:
    """A Flower error reply that is no client's answer (a message, reply or node the
    SuperLink or the grid reports unavailable): recorded on the round, never as a fate.

    ``node_id`` is the sampled node the error concerns (matched by the message it replies
    to), or None when it names no sampled node."""

    node_id: int | None
    code: int
    reason: str
