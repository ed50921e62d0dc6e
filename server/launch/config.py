"""Federation and region configuration (TOML), validated up front with clear errors."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedgate.clients.profiles import PROFILES
from fedgate.errors import UsageError
from fedgate.home import resolve_home
from fedgate.models.ids import DEFAULT_MODEL, MODEL_IDS
from fedgate.strategies.rule_config import REGION_DEFAULT


class ConfigError(UsageError, ValueError):
    """A federation or region configuration is missing or malformed."""


@dataclass(frozen=True)
class RegionConfig:
    """One compliance region: its Flower server settings and its devices."""

    name: str
    rounds: int = 4
    clients_per_round: int = 4
    min_clients: int = 3
    aggregator: str = REGION_DEFAULT.aggregator
    f: int = REGION_DEFAULT.f
    pre: str = REGION_DEFAULT.pre
    model: str = DEFAULT_MODEL
    lr: float = 0.1
    round_timeout: float = 120.0
    max_examples: int = 1000
    port: int = 9100
    nodes: tuple[str, ...] = ("phone", "pi", "phone", "pi")
    # Simulated misbehaviour, for demos and tests: node index -> attack profile name
    # (a model-poisoning attack from fedgate.clients.sim.attacks or a signing fault), and the
    # node indices whose devices are enrolled and then revoked before any run.
    attacks: dict[int, str] = field(default_factory=dict)
    revoked: tuple[int, ...] = ()
    db: str = ""  # database URL; empty: SQLite file under the fedgate home

    @property
    def superlink_port(self) -> int:
        """Flower 1.41 serves the SuperLink's Fleet, Control and Runtime APIs on one port."""
        return self.port

    @property
    def fleet_port(self) -> int:
        """The region's fleet-only proxy: the one address its devices are given."""
        return self.port + 1

    def node_runtime_port(self, index: int) -> int:
        return self.port + 10 + index


@dataclass(frozen=True)
class FederationConfig:
    """The whole federation: shared data settings and the regions."""

    name: str = "fedgate"
    seed: int = 0
    alpha: float = 0.5
    regions: tuple[RegionConfig, ...] = field(default_factory=tuple)

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def region(self, name: str) -> RegionConfig:
        for r in self.regions:
            if r.name == name:
                return r
        known = ", ".join(self.region_names) or "none"
        raise ConfigError(f"unknown region {name!r}; regions in this federation: {known}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REGION_KEYS = {
    "rounds": int,
    "clients-per-round": int,
    "min-clients": int,
    "aggregator": str,
    "f": int,
    "pre": str,
    "model": str,
    "lr": float,
    "round-timeout": float,
    "max-examples": int,
    "port": int,
    "nodes": list,
    "attacks": dict,
    "revoked": list,
    "db": str,
}


def _typed(where: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
    return value


def _parse_region(name: str, table: dict[str, Any], where: str) -> RegionConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [regions.{name}] must be a table")
    unknown = set(table) - set(_REGION_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: [regions.{name}] has unknown key(s) {sorted(unknown)}; "
            f"allowed: {sorted(_REGION_KEYS)}"
        )
    kw: dict[str, Any] = {}
    for key, kind in _REGION_KEYS.items():
        if key in table:
            kw[key.replace("-", "_")] = _typed(f"{where} [regions.{name}]", key, table[key], kind)
    if "nodes" in kw:
        kw["nodes"] = tuple(kw["nodes"])
    if "revoked" in kw:
        kw["revoked"] = tuple(kw["revoked"])
    if "attacks" in kw:
        kw["attacks"] = _node_attacks(f"{where} [regions.{name}]", kw["attacks"])
    region = RegionConfig(name=name, **kw)
    validate_region(region, where)
    return region


def _node_attacks(where: str, table: dict[str, Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for key, value in table.items():
        if not str(key).isdigit() or not isinstance(value, str):
            raise ConfigError(
                f'{where}: attacks maps node indices to profile names, e.g. {{ 4 = "sign-flip" }}'
            )
        out[int(key)] = value
    return out


def validate_region(r: RegionConfig, where: str = "config") -> None:
    """Raise ``ConfigError`` naming the first inconsistent setting of ``r``."""
    loc = f"{where} [regions.{r.name}]"
    if not r.name.isidentifier():
        raise ConfigError(f"{loc}: region name must be a simple identifier like 'eu'")
    if r.rounds < 1:
        raise ConfigError(f"{loc}: rounds must be >= 1")
    if r.min_clients < 1:
        raise ConfigError(f"{loc}: min-clients must be >= 1")
    if r.clients_per_round < r.min_clients:
        raise ConfigError(f"{loc}: clients-per-round must be >= min-clients")
    if r.model not in MODEL_IDS:
        raise ConfigError(f"{loc}: unknown model {r.model!r}; known: {sorted(MODEL_IDS)}")
    bad = [p for p in r.nodes if p not in PROFILES]
    if bad:
        raise ConfigError(f"{loc}: unknown device profile(s) {bad}; known: {sorted(PROFILES)}")
    if r.nodes and len(r.nodes) < r.min_clients:
        raise ConfigError(
            f"{loc}: {len(r.nodes)} node(s) can never reach min-clients={r.min_clients}"
        )
    # heavy import (flwr): loaded only when a config is validated
    from fedgate.clients.sim.misbehaviour import known_profiles

    for index in [*r.attacks, *r.revoked]:
        if not isinstance(index, int) or not 0 <= index < len(r.nodes):
            raise ConfigError(f"{loc}: node index {index!r} out of range 0..{len(r.nodes) - 1}")
    unknown = sorted({a for a in r.attacks.values() if a not in known_profiles()})
    if unknown:
        raise ConfigError(
            f"{loc}: unknown attack profile(s) {unknown}; known: {', '.join(known_profiles())}"
        )
    if not 1024 <= r.port <= 65000:
        raise ConfigError(f"{loc}: port must be in [1024, 65000]")
    if r.f < 0:
        raise ConfigError(f"{loc}: f must be >= 0")
    # heavy import (the aggregators, torch): loaded only when a config is validated
    from fedgate.strategies.rules import check_rule

    try:
        check_rule(r.aggregator, r.f, r.pre or None, r.clients_per_round, r.min_clients)
    except ValueError as exc:
        raise ConfigError(f"{loc}: {exc}") from None


def parse_federation(data: dict[str, Any], where: str = "config") -> FederationConfig:
    fed = data.get("federation", {})
    if not isinstance(fed, dict):
        raise ConfigError(f"{where}: [federation] must be a table")
    regions_t = data.get("regions")
    if not isinstance(regions_t, dict) or not regions_t:
        raise ConfigError(f"{where}: needs at least one [regions.<name>] table")
    regions = tuple(_parse_region(n, t, where) for n, t in regions_t.items())
    ports: dict[int, str] = {}
    for r in regions:
        for p in range(r.port, r.node_runtime_port(len(r.nodes))):
            if p in ports:
                raise ConfigError(f"{where}: regions {ports[p]} and {r.name} overlap at port {p}")
            ports[p] = r.name
    alpha = _typed(f"{where} [federation]", "alpha", fed.get("alpha", 0.5), float)
    if alpha <= 0:
        raise ConfigError(f"{where} [federation]: alpha must be > 0")
    return FederationConfig(
        name=_typed(f"{where} [federation]", "name", fed.get("name", "fedgate"), str),
        seed=_typed(f"{where} [federation]", "seed", fed.get("seed", 0), int),
        alpha=alpha,
        regions=regions,
    )


def load_federation(path: Path) -> FederationConfig:
    """Read and validate a federation TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (create one with `fedgate init`)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_federation(data, str(path))


DEFAULT_FEDERATION_TOML = """\
# fedgate federation: one Flower SuperLink per compliance region.
[federation]
name = "demo"
seed = 0        # data split and model initialisation
alpha = 0.5     # Dirichlet label skew across a region's devices (smaller = more non-IID)

# Each region: its own SuperLink, database, keys and devices. The aggregation rule defaults
# to fedgate's robust region default; set `aggregator`, `f` and `pre` to choose another.
# `attacks` and `revoked` make some simulated devices misbehave, to watch the defences work.
[regions.eu]
rounds = 5
clients-per-round = 7
min-clients = 3
model = "mlp-64-32-10"
port = 9100     # the SuperLink (Fleet, Control and Runtime APIs); SuperNodes from 9110
nodes = ["phone", "pi", "phone", "pi", "phone", "pi", "phone"]
attacks = { 4 = "sign-flip", 6 = "wrong-key" }   # node index -> attack profile
revoked = [5]   # enrolled, then revoked: its updates must be refused

[regions.us]
rounds = 5
clients-per-round = 6
min-clients = 3
model = "mlp-64-32-10"
port = 9200
nodes = ["pi", "phone", "pi", "phone", "pi", "phone"]
attacks = { 4 = "gaussian", 5 = "unsigned" }
revoked = [3]
"""


def default_federation() -> FederationConfig:
    return parse_federation(tomllib.loads(DEFAULT_FEDERATION_TOML), "default config")


FEDERATION_FILE = "federation.toml"


def resolve(home: Path | None, config: Path | None) -> tuple[Path, FederationConfig]:
    """The home directory and the federation config a verb works on."""
    home = resolve_home(home)
    if config is not None:
        return home, load_federation(config)
    if (home / FEDERATION_FILE).is_file():
        return home, load_federation(home / FEDERATION_FILE)
    return home, default_federation()
