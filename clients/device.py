"""The device a ClientApp acts as: its key, its region and its region server's public key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.clients.identity import load_identity, read_enrollment, read_trust_anchor
from fedgate.errors import UsageError

NODE_CONFIG_KEY = "device-dir"


class DeviceSetupError(UsageError, RuntimeError):
    """This SuperNode has no usable enrolled device identity."""


@dataclass(frozen=True)
class Device:
    """An enrolled device, ready to verify instructions and sign updates."""

    key: Ed25519PrivateKey
    device_id: str
    region: str
    anchor: Ed25519PublicKey  # the region server's key, stored at enrollment


DEVICE_CACHE = 16384
"""Devices kept loaded per process: one per SuperNode's device directory. A simulation's
ClientApp worker acts as every virtual device in turn (5,000 at the largest scale run), and
reading a key, an enrollment and a trust anchor from disk costs more than signing."""


@lru_cache(maxsize=DEVICE_CACHE)
def _load(device_dir: str) -> Device:
    identity = load_identity(Path(device_dir))
    enrollment = read_enrollment(Path(device_dir))
    if enrollment is None:
        raise DeviceSetupError(
            f"{device_dir} holds a key but no enrollment; run `fedgate client enroll` first"
        )
    if enrollment.device_id != identity.device_id:
        raise DeviceSetupError(f"{device_dir}: enrollment.json names another key")
    anchor = read_trust_anchor(Path(device_dir), enrollment.region)
    return Device(identity.key, identity.device_id, enrollment.region, anchor)


def node_config_arg(items: Mapping[str, str | int | float]) -> str:
    """``items`` as one ``flower-supernode --node-config`` argument (strings quoted)."""
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in items.items())


def load_device(node_config: Mapping[str, Any]) -> Device:
    """The device named by the SuperNode's ``device-dir`` node config (cached per process)."""
    device_dir = str(node_config.get(NODE_CONFIG_KEY, "") or "")
    if not device_dir:
        raise DeviceSetupError(
            "this SuperNode has no device identity: start it with --node-config "
            "\"device-dir='DIR'\" after `fedgate client enroll --device-dir DIR`"
        )
    return _load(device_dir)
