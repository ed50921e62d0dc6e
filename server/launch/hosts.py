"""Where the topology's processes live: the one description of hosts behind every rendering.

A ``Layout`` places each region's server side (SuperLink, executor, fleet proxy, and the
enrollment service where there is one) on a region host and each SuperNode (with its
ClientApp worker) on a device host, and names the operator host. ``fedgate up`` renders it
as local processes (``local_layout``: every host is this machine, 127.0.0.1);
``fedgate.server.launch.netns`` renders the same layout as Linux network namespaces
(``netns_layout``: one namespace per host, its own address, the region's fleet reached by
name), and ``compose_hosts`` gives the compose rendering's host per service.

A host's processes run through ``Host.wrap`` (``ip netns exec`` when it is a namespace).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from fedgate.server.launch.config import FederationConfig

LOCAL = "127.0.0.1"


@dataclass(frozen=True)
class Host:
    """One host: the address its services listen on and others reach it at, the network
    namespace its processes run in (None: this one), and the names others know it by."""

    name: str
    address: str = LOCAL
    namespace: str | None = None
    names: tuple[str, ...] = ()

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` as run on this host."""
        return cmd if self.namespace is None else ["ip", "netns", "exec", self.namespace, *cmd]

    @property
    def reach(self) -> str:
        """How other hosts address it: its first name, else its address."""
        return self.names[0] if self.names else self.address


@dataclass(frozen=True)
class RegionHosts:
    """A region's server host and one host per SuperNode (in the config's node order)."""

    region: str
    server: Host
    devices: tuple[Host, ...]
    subnet: str = ""  # the region's network (netns), empty when local

    def device(self, index: int) -> Host:
        return self.devices[index]

    @property
    def tls_names(self) -> tuple[str, ...]:
        """Names and addresses the region's certificate must cover beyond the defaults."""
        server = self.server
        return tuple(n for n in (*server.names, server.address) if n != LOCAL)


@dataclass(frozen=True)
class Layout:
    """Every host of a topology; ``kind`` names the rendering it was made for."""

    kind: str  # local | netns | compose
    operator: Host
    regions: dict[str, RegionHosts] = field(default_factory=dict)

    def region(self, name: str) -> RegionHosts:
        return self.regions[name]

    @property
    def local(self) -> bool:
        return self.kind == "local"

    def hosts(self) -> list[Host]:
        out = [self.operator]
        for r in self.regions.values():
            out += [r.server, *r.devices]
        return list(dict.fromkeys(out))

    def server(self, region: str) -> Host:
        """The region's server host (this machine when the layout does not place it)."""
        hosts = self.regions.get(region)
        return hosts.server if hosts is not None else Host("local")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        def host(d: dict[str, Any]) -> Host:
            return Host(d["name"], d["address"], d.get("namespace"), tuple(d.get("names", ())))

        regions = {
            name: RegionHosts(
                r["region"],
                host(r["server"]),
                tuple(host(h) for h in r["devices"]),
                r.get("subnet", ""),
            )
            for name, r in data.get("regions", {}).items()
        }
        return cls(data["kind"], host(data["operator"]), regions)


def local_layout(fed: FederationConfig) -> Layout:
    """Every host is this machine at 127.0.0.1: what ``fedgate up`` starts by default."""
    here = Host("local")
    regions = {r.name: RegionHosts(r.name, here, tuple(here for _ in r.nodes)) for r in fed.regions}
    return Layout("local", here, regions)


def fleet_name(region: str) -> str:
    """The name devices reach their region's fleet proxy by (as in compose.yaml)."""
    return f"fleet-{region}"


def netns_layout(fed: FederationConfig, prefix: str = "fgp", net: str = "10.231.0.0/16") -> Layout:
    """One network namespace per host, named ``<prefix>-<region>`` (the region's server
    host) and ``<prefix>-<region>-d<i>`` (device i), on one /24 of ``net`` per region
    (``.1`` the server, ``.10 + i`` the devices, ``.254`` the operator: this namespace,
    reaching every region's network, which no device reaches beyond its own)."""
    base = ipaddress.ip_network(net)
    subnets = list(base.subnets(new_prefix=24))
    if len(fed.regions) >= len(subnets):
        raise ValueError(f"{net} has room for {len(subnets) - 1} regions, not {len(fed.regions)}")
    regions = {}
    operator_addrs = []
    for k, r in enumerate(fed.regions, start=1):
        sub = subnets[k]
        if len(r.nodes) > 200:
            raise ValueError(f"region {r.name}: at most 200 device hosts per region")
        server = Host(f"{r.name}-server", str(sub[1]), f"{prefix}-{r.name}",
                      (fleet_name(r.name), f"superlink-{r.name}"))  # fmt: skip
        devices = tuple(
            Host(f"{r.name}-device-{i}", str(sub[10 + i]), f"{prefix}-{r.name}-d{i}")
            for i in range(len(r.nodes))
        )
        regions[r.name] = RegionHosts(r.name, server, devices, str(sub))
        operator_addrs.append(str(sub[254]))
    return Layout("netns", Host("operator", operator_addrs[0], None, ()), regions)


def compose_layout(fed: FederationConfig) -> Layout:
    """The compose rendering's hosts: addresses are compose service names. A region's
    server host is its SuperLink (reached by the operator) and its fleet proxy (the one name
    its devices reach, ``fleet-<region>``); each device host is a SuperNode service named for
    its profile (``supernode-<region>-<profile>``, ``-2``, ``-3`` for a profile's further
    devices; its ClientApp in its network namespace)."""
    regions = {}
    for r in fed.regions:
        server = Host(f"{r.name}-server", f"superlink-{r.name}", None,
                      (fleet_name(r.name), f"superlink-{r.name}"))  # fmt: skip
        seen: dict[str, int] = {}
        devices = []
        for i, p in enumerate(r.nodes):
            seen[p] = seen.get(p, 0) + 1
            name = p if seen[p] == 1 else f"{p}-{seen[p]}"  # phone, pi, phone-2, ...
            devices.append(Host(f"{r.name}-device-{i}", f"supernode-{r.name}-{name}"))
        regions[r.name] = RegionHosts(r.name, server, tuple(devices))
    return Layout("compose", Host("operator"), regions)


def compose_networks(layout: Layout) -> dict[str, set[str]]:
    """Which compose networks each service of the layout joins: a region's server side on
    ``<region>-region``, its fleet proxy also on ``<region>-edge``, its devices on
    ``<region>-edge`` only (no device shares a network with another region or the SuperLink:
    residency at the network level, as in the network-namespace rendering)."""
    out: dict[str, set[str]] = {}
    for name, region in layout.regions.items():
        inner, edge = f"{name}-region", f"{name}-edge"
        out[region.server.address] = {inner}
        out[fleet_name(name)] = {inner, edge}
        out[f"serverapp-{name}"] = {inner}
        for device in region.devices:
            out[device.address] = {edge}
    return out
