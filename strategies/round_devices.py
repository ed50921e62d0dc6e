"""The device registry read once per round for a screen's lookups, and confirmed once more
before aggregation (``SignatureScreen.confirm``): two registry reads a round instead of one
query per update.

A screen asks ``lookup(round)`` for each reply: the registry's devices as one read
(``devices()``) of the round's first lookup. A device missing from that read (enrolled after
it) is asked of the registry itself, so a late enrollment is never refused. Before the
round aggregates, ``reread`` reads the registry again; the screen refuses every accepted update
whose device has since been revoked, removed or re-keyed: a revocation made at any time
before aggregation is honoured, as with one query per update. A registry without
``devices()`` is used as it is (one ``get`` per update).
"""

from __future__ import annotations

import threading
from typing import Any


class _Snapshot:
    """``get`` from one read of the registry; misses fall through to the registry."""

    def __init__(self, registry: Any, devices: dict[str, Any]) -> None:
        self.registry, self.devices = registry, devices

    def get(self, device_id: str) -> Any:
        device = self.devices.get(device_id)
        return device if device is not None else self.registry.get(device_id)


class RoundDevices:
    """Per-round reads of ``registry`` for a screen (see the module doc)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.batched = callable(getattr(registry, "devices", None))
        self._round: int | None = None
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        return {device.device_id: device for device in self.registry.devices()}

    def lookup(self, server_round: int) -> Any:
        """What the screen asks for devices during ``server_round`` (thread-safe)."""
        if not self.batched:
            return self.registry
        with self._lock:  # the first lookup of a round reads, the others share it
            if self._snapshot is None or self._round != server_round:
                self._snapshot, self._round = _Snapshot(self.registry, self._read()), server_round
            return self._snapshot

    def reread(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(checked, now)``: the devices the round's lookups used and a fresh read of the
        registry (device id -> device); a registry failure propagates."""
        checked = self._snapshot.devices if self._snapshot is not None else {}
        return checked, self._read()
