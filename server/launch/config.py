"""Federation and region configuration (TOML), validated up front with clear errors."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fedgate.clients.profiles import PROFILES
from fedgate.home import resolve_home

# ConfigError is defined beside the run spec whose rules raise it; callers import it from here
from fedgate.server.region.run_spec import ConfigError, RunSpec, check_settings, key_of

MAX_PORT = 65535
NODE_PORT_OFFSET = 10  # a region's SuperNodes listen from port + 10


@dataclass(frozen=True)
class RegionConfig:
    """One compliance region: its Flower server settings and its devices. The settings a run
    takes default to ``RunSpec``'s (one place) and are checked against its rules."""

    name: str
    rounds: int = RunSpec.rounds
    clients_per_round: int = RunSpec.clients_per_round
    min_clients: int = RunSpec.min_clients
    aggregator: str = RunSpec.aggregator
    f: int = RunSpec.f
    pre: str = RunSpec.pre
    model: str = RunSpec.model
    lr: float = RunSpec.lr
    round_timeout: float = RunSpec.round_timeout
    max_examples: int = RunSpec.max_examples
    port: int = 9100
    nodes: tuple[str, ...] = ("phone", "pi", "phone", "pi")
    # Simulated misbehaviour, for demos and tests: node index -> attack profile name
    # (a model-poisoning attack from fedgate.clients.sim.attacks or a signing fault), and the
    # node indices whose devices are enrolled and then revoked before any run.
    attacks: dict[int, str] = field(default_factory=dict)
    revoked: tuple[int, ...] = ()
    db: str = RunSpec.db  # database URL; empty: SQLite file under the fedgate home
    # Devices beyond ``nodes`` join over the network (`fedgate client join`): only then may
    # ``nodes`` be empty or fewer than clients-per-round.
    joined_devices: bool = False

    @property
    def superlink_port(self) -> int:
        """Flower 1.41 serves the SuperLink's Fleet, Control and Runtime APIs on one port."""
        return self.port

    @property
    def fleet_port(self) -> int:
        """The region's fleet-only proxy: the one address its devices are given."""
        return self.port + 1

    @property
    def enroll_port(self) -> int:
        """The region's enrollment service (HTTPS): where devices enroll with a token."""
        return self.port + 2

    def node_runtime_port(self, index: int) -> int:
        return self.port + NODE_PORT_OFFSET + index

    @property
    def last_port(self) -> int:
        """The highest port the region may use: its last SuperNode's (port+10 with none)."""
        return self.node_runtime_port(max(len(self.nodes), 1) - 1)


@dataclass(frozen=True)
class FederationConfig:
    """The whole federation: shared data settings and the regions."""

    name: str = "fedgate"
    seed: int = RunSpec.seed
    alpha: float = RunSpec.alpha
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


# The region's run settings (typed by RunSpec) and its topology.
RUN_SETTINGS = tuple(f for f in fields(RunSpec) if f.name in RegionConfig.__dataclass_fields__)
_REGION_KEYS: dict[str, type] = {
    **{key_of(f.name): f.type for f in RUN_SETTINGS},
    "port": int,
    "nodes": list,
    "attacks": dict,
    "revoked": list,
    "joined-devices": bool,
}


def _typed(where: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is bool and isinstance(value, bool):
        return value
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


def validate_region(r: RegionConfig, where: str = "config", node_count: int | None = None) -> None:
    """Raise ``ConfigError`` naming the first setting of ``r`` outside what it allows, or
    inconsistent with the others; ``node_count``: the devices a simulated run has."""
    loc = f"{where} [regions.{r.name}]"
    settings = {f.name: getattr(r, f.name) for f in RUN_SETTINGS}
    check_settings({"region": r.name, **settings}, loc)
    bad = [p for p in r.nodes if not isinstance(p, str) or p not in PROFILES]
    if bad:
        raise ConfigError(f"{loc}: unknown device profile(s) {bad}; known: {sorted(PROFILES)}")
    if node_count is None and not r.joined_devices:  # the nodes are all its devices
        if not r.nodes:
            raise ConfigError(
                f"{loc}: nodes is empty, so no round can start; list the region's devices, "
                "or set joined-devices = true if they join over the network"
            )
        if len(r.nodes) < max(r.min_clients, r.clients_per_round):
            raise ConfigError(
                f"{loc}: {len(r.nodes)} node(s) can never give clients-per-round="
                f"{r.clients_per_round} / min-clients={r.min_clients}; add nodes, lower them, "
                "or set joined-devices = true if more devices join over the network"
            )
    # A simulation's devices are its ``node_count`` virtual ones; a deployed region with
    # joined devices waits for min-clients online when a run is submitted.
    if node_count is not None and r.clients_per_round > node_count:
        raise ConfigError(
            f"{loc}: clients-per-round must be <= the {node_count} simulated device(s) "
            f"(--num-supernodes; default: the region's nodes), got {r.clients_per_round}"
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
    highest = MAX_PORT - (r.last_port - r.port)
    if not 1024 <= r.port <= highest:
        raise ConfigError(
            f"{loc}: port must be in 1024..{highest} (the region uses ports port..port+"
            f"{r.last_port - r.port}, one per node from port+{NODE_PORT_OFFSET}; the last "
            f"must be <= {MAX_PORT}), got {r.port}"
        )
    # heavy import (the aggregators, torch): loaded only when a config is validated
    from fedgate.strategies.rules import check_rule

    try:
        check_rule(r.aggregator, r.f, r.pre or None, r.clients_per_round, r.min_clients)
    except ValueError as exc:
        raise ConfigError(f"{loc}: {exc}") from None


_FEDERATION_KEYS: dict[str, type] = {"name": str, "seed": int, "alpha": float}


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
    loc = f"{where} [federation]"
    unknown = set(fed) - set(_FEDERATION_KEYS)
    if unknown:
        raise ConfigError(
            f"{loc} has unknown key(s) {sorted(unknown)}; allowed: {sorted(_FEDERATION_KEYS)}"
        )
    defaults = FederationConfig()
    kw = {
        key: _typed(loc, key, fed.get(key, getattr(defaults, key)), kind)
        for key, kind in _FEDERATION_KEYS.items()
    }
    check_settings({"seed": kw["seed"], "alpha": kw["alpha"]}, loc)
    return FederationConfig(**kw, regions=regions)


def load_federation(path: Path) -> FederationConfig:
    """Read and validate a federation TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (create one with `fedgate init`)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
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
