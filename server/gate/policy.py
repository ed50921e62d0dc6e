"""A region's gate policy and the pure evaluation of an artifact's manifest against it.

The policy is a TOML file kept with the region config (``<home>/regions/<r>/policy.toml``, or
``--policy FILE``); a key it leaves out keeps its default. Its digest (SHA-256 of the
canonical JSON of the effective policy) is what decisions record.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fedgate.crypto import canonical_json, sha256_hex
from fedgate.errors import UsageError
from fedgate.server.region.artifact import Manifest


class PolicyError(UsageError, ValueError):
    """A policy file that cannot be used as it is."""


@dataclass(frozen=True)
class Policy:
    """The limits an artifact must meet to leave its region (TOML keys: the names with
    ``-`` for ``_``)."""

    min_devices: int = 3
    min_val_accuracy: float = 0.5
    max_rejected_fraction: float = 0.5
    allowed_aggregators: tuple[str, ...] = ()  # empty: any aggregator
    min_f: int = 0
    max_accuracy_drop: float = 0.05
    may_leave_region: bool = True  # residency: False keeps every artifact in the region

    def __post_init__(self) -> None:
        for name in ("min_val_accuracy", "max_rejected_fraction", "max_accuracy_drop"):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise PolicyError(f"policy {_key(name)} must be in [0, 1], got {value}")
        if self.min_devices < 0 or self.min_f < 0:
            raise PolicyError("policy min-devices and min-f must be >= 0")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["allowed_aggregators"] = list(self.allowed_aggregators)
        return data

    @property
    def digest(self) -> str:
        return sha256_hex(canonical_json(self.to_json()))

    @classmethod
    def from_toml(cls, text: str, where: str = "policy") -> Policy:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{where}: not TOML ({exc})") from None
        raw = raw.get("policy", raw) if isinstance(raw.get("policy"), dict) else raw
        known = {_key(f.name): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            spec = known.get(key)
            if spec is None:
                raise PolicyError(f"{where}: unknown key {key!r}; keys: {', '.join(known)}")
            values[spec.name] = _typed(spec.name, value, where)
        return cls(**values)


def _key(name: str) -> str:
    return name.replace("_", "-")


def _typed(name: str, value: Any, where: str) -> Any:
    default = getattr(Policy, name, None)
    bad = PolicyError(f"{where}: {_key(name)} has a bad value {value!r}")
    if name == "allowed_aggregators":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad
        return value
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise bad
    return float(value)


def policy_path(home: str | Path, region: str) -> Path:
    return Path(home) / "regions" / region / "policy.toml"


def load_policy(home: str | Path, region: str, path: Path | None = None) -> Policy:
    """``path``, else the region's ``policy.toml``, else the defaults."""
    target = path or policy_path(home, region)
    if path is None and not target.is_file():
        return Policy()
    return Policy.from_toml(Path(target).read_text(), str(target))


@dataclass(frozen=True)
class Check:
    """One policy check: the measured value beside the limit, and whether it passed."""

    name: str
    passed: bool
    measured: str
    limit: str
    applicable: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.4f}"


def evaluate(manifest: Manifest, policy: Policy, base_accuracy: float | None) -> list[Check]:
    """Every check of ``policy`` on ``manifest``; ``base_accuracy`` is the base global
    model's validation accuracy (None: the run did not start from one, the drop check is not
    applicable and passes)."""
    val = manifest.val_acc
    allowed = policy.allowed_aggregators
    checks = [
        Check("distinct devices", manifest.devices_accepted >= policy.min_devices,
              str(manifest.devices_accepted), f">= {policy.min_devices}"),
        Check("validation accuracy", val is not None and val >= policy.min_val_accuracy,
              _fmt(val), f">= {policy.min_val_accuracy:.4f}"),
        Check("rejected fraction", manifest.rejected_fraction <= policy.max_rejected_fraction,
              f"{manifest.rejected_fraction:.4f}", f"<= {policy.max_rejected_fraction:.4f}"),
        Check("aggregator", not allowed or manifest.aggregator in allowed,
              manifest.aggregator, "any" if not allowed else " | ".join(allowed)),
        Check("f", manifest.f >= policy.min_f, str(manifest.f), f">= {policy.min_f}"),
    ]  # fmt: skip
    if base_accuracy is None:
        checks.append(Check("accuracy drop vs base", True, "n/a (no base global model)",
                            f"<= {policy.max_accuracy_drop:.4f}", applicable=False))  # fmt: skip
    else:
        drop = None if val is None else base_accuracy - val
        checks.append(Check("accuracy drop vs base",
                            drop is not None and drop <= policy.max_accuracy_drop,
                            _fmt(drop), f"<= {policy.max_accuracy_drop:.4f}"))  # fmt: skip
    checks.append(Check("residency", policy.may_leave_region,
                        "may leave" if policy.may_leave_region else "must stay in region",
                        "may-leave-region = true"))  # fmt: skip
    return checks


def base_accuracy(manifest: Manifest) -> float | None:
    """The base global model's validation accuracy the manifest records (None: no base)."""
    return manifest.base_val_acc if manifest.base_global_version else None
