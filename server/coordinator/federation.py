"""The federation file the coordinator trusts: which regions take part, each region server's
public key and its registered approvers' keys, and the merge settings.

``<home>/coordinator/federation.toml``::

    [federation]
    architecture = "mnist-cnn-v1"   # every artifact must name this model architecture id
    robust = "median"               # rule with >= 3 regions: median or trimmed-mean
    trim = 1                        # trimmed-mean: values dropped per side
    device_cap = 1000               # weighted mean: a region's accepted devices count up to this
    approvals = 1                   # valid approvals an artifact needs
    deadline_seconds = 3600         # serve: merge what is there after this long

    [regions.eu]
    key = "<hex of the region server's raw Ed25519 public key>"
    approvers = ["<hex>", ...]
    export = true                   # false: this region's artifacts may not leave it

A region not listed here is refused.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgate.crypto import SignatureError, fingerprint, load_public_key
from fedgate.errors import UsageError

ROBUST_RULES = ("median", "trimmed-mean")


class FederationError(UsageError, ValueError):
    """The federation file is missing or malformed."""


@dataclass(frozen=True)
class RegionTrust:
    """What the coordinator trusts of one region."""

    name: str
    key: Ed25519PublicKey
    approvers: Mapping[str, Ed25519PublicKey]  # by fingerprint
    export: bool = True  # False: nothing of this region may be merged

    @property
    def keys(self) -> dict[str, Ed25519PublicKey]:
        return {fingerprint(self.key): self.key}


@dataclass(frozen=True)
class Federation:
    architecture: str
    regions: Mapping[str, RegionTrust]
    robust: str = "median"
    trim: int = 1
    device_cap: int = 1000
    approvals: int = 1
    deadline_seconds: float = 3600.0

    def all_approvers(self) -> dict[str, tuple[str, Ed25519PublicKey]]:
        """Every registered approver key: fingerprint -> (its region, key)."""
        return {fp: (r.name, k) for r in self.regions.values() for fp, k in r.approvers.items()}


def federation_path(home: Path) -> Path:
    return home / "coordinator" / "federation.toml"


def _key(text: object, where: str) -> Ed25519PublicKey:
    try:
        return load_public_key(bytes.fromhex(str(text)))
    except (ValueError, SignatureError):
        raise FederationError(f"{where}: not a hex Ed25519 public key") from None


def _int(table: Mapping[str, Any], name: str, default: int, low: int) -> int:
    value = table.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise FederationError(f"[federation] {name} must be an integer >= {low}, got {value!r}")
    return value


def parse_federation(data: Mapping[str, Any], where: str = "federation") -> Federation:
    head = data.get("federation", {})
    arch = head.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise FederationError(f"{where}: [federation] architecture (a model id) is required")
    robust = head.get("robust", "median")
    if robust not in ROBUST_RULES:
        raise FederationError(f"{where}: robust must be one of {', '.join(ROBUST_RULES)}")
    deadline = head.get("deadline_seconds", 3600)
    if not isinstance(deadline, int | float) or deadline <= 0:
        raise FederationError(f"{where}: deadline_seconds must be a positive number")
    regions: dict[str, RegionTrust] = {}
    for name, table in dict(data.get("regions", {})).items():
        if not isinstance(table, dict):
            raise FederationError(f"{where}: [regions.{name}] must be a table")
        approvers = table.get("approvers", [])
        if not isinstance(approvers, list) or not approvers:
            raise FederationError(f"{where}: [regions.{name}] approvers must list approver keys")
        keys = [_key(a, f"{where}: [regions.{name}] approver") for a in approvers]
        export = table.get("export", True)
        if not isinstance(export, bool):
            raise FederationError(f"{where}: [regions.{name}] export must be true or false")
        regions[name] = RegionTrust(
            name, _key(table.get("key"), f"{where}: [regions.{name}] key"),
            {fingerprint(k): k for k in keys}, export,
        )  # fmt: skip
    if not regions:
        raise FederationError(f"{where}: no [regions.NAME] tables")
    return Federation(
        arch, regions, robust, _int(head, "trim", 1, 0), _int(head, "device_cap", 1000, 1),
        _int(head, "approvals", 1, 1), float(deadline),
    )  # fmt: skip


def render_federation(
    architecture: str, regions: Mapping[str, tuple[str, Sequence[str]]], **settings: Any
) -> str:
    """A federation file: ``regions`` maps a region to (server key hex, approver keys hex);
    ``settings`` are further ``[federation]`` keys (robust, device_cap, ...). Checked by
    ``parse_federation`` before it is returned."""
    head = {"architecture": architecture, **settings}
    lines = ["[federation]", *(f"{k} = {json.dumps(v)}" for k, v in head.items())]
    for name, (key, approvers) in regions.items():
        lines += ["", f"[regions.{name}]", f"key = {json.dumps(key)}",
                  f"approvers = {json.dumps(list(approvers))}", "export = true"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    parse_federation(tomllib.loads(text), "generated federation")
    return text


def load_federation(path: Path) -> Federation:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FederationError(
            f"no federation file at {path} (regions, their keys and approvers)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise FederationError(f"{path}: not TOML ({exc})") from None
    return parse_federation(data, str(path))
