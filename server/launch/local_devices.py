"""The simulated devices of a local topology: each enrolled like a real one, some revoked.

``fedgate up`` gives every SuperNode a device directory under the region's state and enrolls
it through the same code path as ``fedgate client enroll`` (one-time token, key 0600, trust
anchor). Nodes listed in the region's ``revoked`` are revoked right after, so demos and tests
exercise revocation for real.
"""

from __future__ import annotations

from pathlib import Path

from fedgate.clients.identity import read_enrollment
from fedgate.server.launch.config import RegionConfig


def device_dir(home: Path, region: str, index: int, kind: str = "node") -> Path:
    """A simulated device's directory: ``node-<i>`` for SuperNodes, ``sim-<i>`` for the
    simulation engine's virtual devices."""
    return Path(home) / "regions" / region / f"{kind}-{index}" / "device"


def enroll_region_devices(
    home: Path, region: RegionConfig, profiles: tuple[str, ...] | None = None, kind: str = "node"
) -> list[str]:
    """Enroll (once) every device of ``region`` and revoke the configured ones; returns ids.

    ``profiles`` defaults to the region's SuperNodes; the simulation engine passes its own.
    """
    # heavy import (database, audit chain): device_dir alone is needed by `status`
    from fedgate.server.trust.enrollment import enroll_device_dir, region_registry

    registry = region_registry(home, region.name, db=region.db or None)
    ids = []
    for index, profile in enumerate(region.nodes if profiles is None else profiles):
        directory = device_dir(home, region.name, index, kind)
        known = read_enrollment(directory)
        if known is None or registry.get(known.device_id) is None:
            device = enroll_device_dir(
                home, region.name, directory, profile, db=region.db or None, force=True
            )
            known_id = device.device_id
        else:
            known_id = known.device_id
        if index in region.revoked and not registry.get(known_id).revoked:
            registry.revoke(known_id)
        ids.append(known_id)
    return ids


def enroll_over_service(home: Path, region: RegionConfig, directory: Path, profile: str = "pi"):
    """Enroll ``directory`` as a device would, through the region's running enrollment service
    (``fedgate up`` starts it): a network token issued with the home's operator key, then
    ``fedgate.clients.enroll_client.enroll_over_network``. Returns its ``NetEnrollment``;
    the device then joins with ``fedgate client join --device-home DIRECTORY``."""
    # heavy import (database, HTTP client): only when a device enrolls this way
    import time

    from fedgate.clients.enroll_client import enroll_over_network
    from fedgate.server.launch.transport import local_service_url
    from fedgate.server.trust.enroll_run import network_token
    from fedgate.server.trust.enrollment import EnrollmentError, region_registry

    url = local_service_url(home, region.name)
    if url is None:
        raise EnrollmentError(f"no enrollment service of region {region.name} runs under {home}")
    ttl = 600.0
    with region_registry(home, region.name, region.db or None, create=False) as registry:
        secret = registry.issue_token(ttl)
    token = network_token(home, region.name, url, secret, time.time() + ttl)
    return enroll_over_network(token, profile, Path(directory))
