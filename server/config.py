"""Federation and region configuration (TOML), validated up front with clear errors."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedgate.clients.profiles import PROFILES
from fedgate.models.ids import DEFAULT_MODEL, MODEL_IDS


class ConfigError(ValueError):
    """A federation or region configuration is missing or malformed."""


@dataclass(frozen=True)
class RegionConfig:
    """One compliance region: its Flower server settings and its devices."""

    name: str
    rounds: int = 4
    clients_per_round: int = 4
    min_clients: int = 3
    aggregator: str = "mean"
    f: int = 0
    pre: str = ""
    model: str = DEFAULT_MODEL
    lr: float = 0.1
    round_timeout: float = 120.0
    max_examples: int = 1000
    port: int = 9100
    nodes: tuple[str, ...] = ("phone", "pi", "phone", "pi")

    @property
    def superlink_port(self) -> int:
        """Flower 1.41 serves the SuperLink's Fleet, Control and Runtime APIs on one port."""
        return self.port

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
    region = RegionConfig(name=name, **kw)
    validate_region(region, where)
    return region


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
    if not 1024 <= r.port <= 65000:
        raise ConfigError(f"{loc}: port must be in [1024, 65000]")
    if r.f < 0:
        raise ConfigError(f"{loc}: f must be >= 0")
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

[regions.eu]
rounds = 4
clients-per-round = 4
min-clients = 3
aggregator = "mean"
model = "mlp-64-32-10"
port = 9100     # the SuperLink (Fleet, Control and Runtime APIs); SuperNodes from 9110
nodes = ["phone", "pi", "phone", "pi"]

[regions.us]
rounds = 4
clients-per-round = 4
min-clients = 3
aggregator = "mean"
model = "mlp-64-32-10"
port = 9200
nodes = ["pi", "phone", "pi", "phone"]
"""


def default_federation() -> FederationConfig:
    return parse_federation(tomllib.loads(DEFAULT_FEDERATION_TOML), "default config")
