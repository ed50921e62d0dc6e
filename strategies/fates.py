"""What happened to one client's update in one round: the record the screens (``envelope``)
and the strategy (``robust_strategy``) both fill in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClientFate:
    """What happened to one client's update in one round."""

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
