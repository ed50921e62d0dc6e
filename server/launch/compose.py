"""compose.yaml, generated: the compose rendering of the federation's host layout.

``fedgate up`` renders ``hosts.local_layout`` as local processes, the network-namespace test
renders ``hosts.netns_layout``, and this module renders ``hosts.compose_layout`` through one
Jinja2 template (``templates/compose.yaml.j2``): the services, their names and networks come
from the layout, the fleet proxies' nginx configs from ``fleet_proxy``. The repository's
``compose.yaml`` is this rendering of ``COMPOSE_FEDERATION`` (``fedgate deploy compose
--check`` and ``tests/test_compose.py`` keep it so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedgate.clients.device import node_config_arg
from fedgate.server.launch.config import FederationConfig, RegionConfig
from fedgate.server.launch.fleet_proxy import ProxySpec, render_server_block
from fedgate.server.launch.hosts import compose_layout, compose_networks, fleet_name

TEMPLATE = Path(__file__).parent / "templates" / "compose.yaml.j2"

# In the containers: the SuperLink's one port (Fleet, Control, Runtime APIs), the fleet
# proxy's TLS port, and where the region's TLS material is mounted.
SUPERLINK_PORT = 9093
FLEET_PORT = 8443
TLS_DIR = Path("/tls")


def _federation() -> FederationConfig:
    settings = {"clients_per_round": 2, "min_clients": 2, "aggregator": "mean", "f": 0}
    regions = tuple(
        RegionConfig(name, port=port, nodes=("phone", "pi"), **settings)
        for name, port in (("eu", 30000), ("us", 30100))
    )
    return FederationConfig("compose", regions=regions)


# The federation the repository's compose.yaml deploys: two regions, a phone and a Pi each.
COMPOSE_FEDERATION = _federation()


@dataclass(frozen=True)
class ComposeDevice:
    """One device host: its SuperNode, ClientApp and one-time enrollment services."""

    profile: str
    service: str  # the SuperNode's service name: the device host in the layout
    suffix: str  # <region>-<profile>[-k]
    node_config: str
    token_var: str

    @property
    def enroll(self) -> str:
        return f"enroll-{self.suffix}"

    @property
    def clientapp(self) -> str:
        return f"clientapp-{self.suffix}"

    @property
    def volume(self) -> str:
        return f"{self.suffix}-device"


@dataclass(frozen=True)
class ComposeRegion:
    """One region's server host (SuperLink, fleet proxy, ServerApp executor, enrollment,
    PostgreSQL, operator tools) and its device hosts, with the host ports it publishes."""

    name: str
    host: str
    superlink: str
    fleet: str
    operator_port: int
    fleet_port: int
    enroll_port: int
    devices: tuple[ComposeDevice, ...]
    fleet_conf: str

    @property
    def upper(self) -> str:
        return self.name.upper().replace("-", "_")

    @property
    def serverapp(self) -> str:
        return f"serverapp-{self.name}"


def _fleet_conf(superlink: str) -> str:
    """The region's fleet-only nginx config as compose holds it (``$`` escaped as ``$$``)."""
    spec = ProxySpec(
        listen_port=FLEET_PORT,
        upstream=f"{superlink}:{SUPERLINK_PORT}",
        server_cert=TLS_DIR / "server.pem",
        server_key=TLS_DIR / "server.key",
        upstream_ca=TLS_DIR / "ca.pem",
        upstream_name=superlink,
        listen_host="0.0.0.0",
    )
    return render_server_block(spec).replace("$", "$$").rstrip("\n")


def compose_regions(fed: FederationConfig) -> list[ComposeRegion]:
    """The template's view of the layout: names from ``compose_layout``, host ports
    (operator ``19093 + 100 k`` on the region host's loopback, fleet ``8443 + k``,
    enrollment ``8443 + n + k`` for region k of n)."""
    layout = compose_layout(fed)
    n = len(fed.regions)
    out = []
    for k, region in enumerate(fed.regions):
        hosts = layout.region(region.name)
        devices = []
        for i, (profile, host) in enumerate(zip(region.nodes, hosts.devices, strict=True)):
            suffix = host.address.removeprefix("supernode-")
            config = {"profile": profile, "region": region.name, "device-dir": "/device",
                      "partition-id": i, "num-partitions": len(region.nodes)}  # fmt: skip
            devices.append(ComposeDevice(
                profile, host.address, suffix, node_config_arg(config),
                f"{suffix.upper().replace('-', '_')}_TOKEN",
            ))  # fmt: skip
        superlink = hosts.server.address
        out.append(ComposeRegion(
            region.name, hosts.server.name, superlink, fleet_name(region.name),
            19093 + 100 * k, FLEET_PORT + k, FLEET_PORT + n + k, tuple(devices),
            _fleet_conf(superlink),
        ))  # fmt: skip
    return out


def render_compose(fed: FederationConfig = COMPOSE_FEDERATION) -> str:
    """compose.yaml for ``fed``: every region's services on the networks the layout gives."""
    # heavy import (Jinja2): only when rendering
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # YAML, not HTML: values are service names and commands
    )
    nets = {svc: sorted(names) for svc, names in compose_networks(compose_layout(fed)).items()}
    return env.get_template(TEMPLATE.name).render(regions=compose_regions(fed), nets=nets)
