"""The typed run specification: every setting of a region's run with its type, default and
allowed values, in one place from the federation config to the regional ServerApp.

``fedgate.server.launch.config`` takes ``RegionConfig``'s defaults from ``RunSpec`` and checks a
config file's values against its rules when the file is loaded; the launcher builds a
``RunSpec`` and passes it to the ServerApp as Flower's run config (``to_run_config``), which
reads it back with ``from_run_config``. A device never imports this module: the defaults it
shares (``lr``, ``alpha``, ``seed``) live in ``fedgate.models.defaults``.
"""

# No ``from __future__ import annotations``: ``from_run_config`` coerces by the fields' types.

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from fedgate.errors import UsageError
from fedgate.models.defaults import DEFAULT_ALPHA, DEFAULT_LR, DEFAULT_SEED
from fedgate.models.ids import DEFAULT_MODEL, MODEL_IDS
from fedgate.strategies.rule_config import REGION_DEFAULT

MAX_SEED = 2**32 - 1
DB_SCHEMES = ("sqlite", "postgresql", "postgres")


class ConfigError(UsageError, ValueError):
    """A federation or region configuration, or a run's settings, is missing or malformed."""


@dataclass(frozen=True)
class Rule:
    """The values a setting allows: ``allowed`` says it in the error line, ``ok`` tests it,
    ``shown`` renders a rejected value (never a secret)."""

    allowed: str
    ok: Callable[[Any], bool]
    shown: Callable[[Any], str] = repr


def _db_scheme(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else url


AT_LEAST_1 = Rule(">= 1", lambda v: v >= 1)
FINITE_POSITIVE = Rule("a finite number > 0", lambda v: math.isfinite(v) and v > 0)
USABLE_DB = Rule(
    "empty (SQLite under the fedgate home) or a sqlite:/// or postgresql:// URL",
    lambda v: not v or ("://" in v and _db_scheme(v) in DB_SCHEMES),
    lambda v: f"a URL of scheme {_db_scheme(v)!r}" if "://" in v else "no URL",
)


BASE_VERSION = Rule(
    "empty or global:N (a global version number)",
    lambda v: not v or re.fullmatch(r"global:[1-9][0-9]{0,8}", v) is not None,
)


def _setting(default: Any, rule: Rule) -> Any:
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One region's run: what the ServerApp trains, how, and where it keeps its records.

    Keys in the run config are the field names in kebab case (``clients-per-round``);
    ``regions`` travels as a comma list and defaults to ``(region,)``.
    """

    home: str  # the fedgate home: region key, registry, default database
    db: str = _setting("", USABLE_DB)  # database URL; empty: SQLite under ``home``
    launched_by: str = "unknown"
    region: str = field(metadata={"rule": Rule("a simple identifier like 'eu'", str.isidentifier)})
    regions: tuple[str, ...] = ()  # every region of the federation (the data split)
    rounds: int = _setting(4, AT_LEAST_1)
    clients_per_round: int = _setting(4, AT_LEAST_1)
    min_clients: int = _setting(3, AT_LEAST_1)
    aggregator: str = REGION_DEFAULT.aggregator
    f: int = _setting(REGION_DEFAULT.f, Rule(">= 0", lambda v: v >= 0))
    pre: str = REGION_DEFAULT.pre
    model: str = _setting(
        DEFAULT_MODEL, Rule(f"one of {', '.join(MODEL_IDS)}", lambda v: v in MODEL_IDS)
    )
    lr: float = _setting(DEFAULT_LR, FINITE_POSITIVE)
    alpha: float = _setting(DEFAULT_ALPHA, FINITE_POSITIVE)
    seed: int = _setting(DEFAULT_SEED, Rule(f"in 0..{MAX_SEED}", lambda v: 0 <= v <= MAX_SEED))
    max_examples: int = _setting(1000, AT_LEAST_1)
    round_timeout: float = _setting(120.0, FINITE_POSITIVE)
    out_dir: str = ""  # where progress and results are written; empty: under the home
    # where the run starts (fedgate.server.launch.run_records.StartPoint): fresh by default
    init_model: str = ""  # SHA-256 of the starting model in the blob store
    first_round: int = _setting(1, AT_LEAST_1)  # 1, or the round a resumed run continues with
    resume_from: str = ""  # the run a resumed run continues
    # the global version the starting model is ("global:N"), recorded in the run's artifact
    base_global_version: str = _setting("", BASE_VERSION)

    def __post_init__(self) -> None:
        if not self.regions:
            object.__setattr__(self, "regions", (self.region,))

    def check(self, where: str = "run config") -> None:
        """Raise ``ConfigError`` naming the first setting outside what it allows."""
        check_settings({f.name: getattr(self, f.name) for f in fields(self)}, where)
        if self.region not in self.regions:
            raise ConfigError(f"{where}: regions {list(self.regions)} must include {self.region!r}")

    def to_run_config(self) -> dict[str, int | float | str]:
        """Flower's run config: kebab-case keys, scalar values."""
        out: dict[str, int | float | str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[key_of(f.name)] = ",".join(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any], where: str = "run config") -> "RunSpec":
        """Read and check a run config; absent keys take their defaults."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            key = key_of(f.name)
            if key not in cfg:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ConfigError(f"{where}: {key} is required")
                continue
            kw[f.name] = _coerced(cfg[key], f.type, f"{where}: {key}")
        spec = cls(**kw)
        spec.check(where)
        return spec


def key_of(name: str) -> str:
    """A field's key in config files and the run config: ``clients_per_round`` ->
    ``clients-per-round``."""
    return name.replace("_", "-")


def _coerced(raw: Any, kind: Any, what: str) -> Any:
    """``raw`` as the field's type (Flower may hand over "3" or 3.0 for 3); never a bool."""
    if kind == tuple[str, ...]:
        return tuple(str(raw).split(",")) if str(raw) else ()
    if isinstance(raw, bool) or (kind is int and isinstance(raw, float) and not raw.is_integer()):
        raise ConfigError(f"{what} must be {kind.__name__}, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{what} must be {kind.__name__}, got {raw!r}") from None


RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(RunSpec) if f.metadata}
RUN_CONFIG_KEYS: tuple[str, ...] = tuple(key_of(f.name) for f in fields(RunSpec))


def check_settings(values: Mapping[str, Any], where: str) -> None:
    """Check ``values`` (``RunSpec`` field names) against the spec's rules; raise
    ``ConfigError`` with one line naming the first bad key, where it is and what it allows."""
    for name, value in values.items():
        rule = RULES.get(name)
        if rule is not None and not rule.ok(value):
            raise ConfigError(
                f"{where}: {key_of(name)} must be {rule.allowed}, got {rule.shown(value)}"
            )
    per_round, least = values.get("clients_per_round"), values.get("min_clients")
    if per_round is not None and least is not None and per_round < least:
        raise ConfigError(
            f"{where}: clients-per-round must be >= min-clients (got {per_round} < {least})"
        )
