"""The simulated devices of a local topology: each enrolled like a real one, some revoked.

``fedgate up`` gives every SuperNode a device directory under the region's state. With TLS
(the default) each new device enrolls as a real one does: the operator issues it an
``fge1.`` network token (``fedgate region enroll-token``), and the device enrolls through the
region's running enrollment service over HTTPS, pinning the region CA from the token
(``enroll_over_service``); the service registers its signing key and node key. Without an
enrollment service (an insecure topology, the simulation engine) devices enroll through the
same code path as the operator-local ``fedgate client enroll``. Nodes listed in the region's
``revoked`` are revoked right after, so demos and tests exercise revocation for real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedgate.clients.identity import read_enrollment
from fedgate.server.launch.config import RegionConfig

NETWORK_TOKEN_TTL = 600.0  # a simulated device's token: spent within the second it is issued
PARALLEL_ENROLLMENTS = 8  # devices of a region enrolling over the network at once


def device_dir(home: Path, region: str, index: int, kind: str = "node") -> Path:
    """A simulated device's directory: ``node-<i>`` for SuperNodes, ``sim-<i>`` for the
    simulation engine's virtual devices."""
    return Path(home) / "regions" / region / f"{kind}-{index}" / "device"


def enroll_region_devices(
    home: Path,
    region: RegionConfig,
    profiles: tuple[str, ...] | None = None,
    kind: str = "node",
    *,
    service_url: str | None = None,
) -> list[str]:
    """Enroll (once) every device of ``region`` and revoke the configured ones; returns ids.

    ``profiles`` defaults to the region's SuperNodes; the simulation engine passes its own.
    ``service_url``: the region's running enrollment service, through which new devices
    enroll over the network with a token each; None: operator-local enrollment.
    """
    # heavy import (database, audit chain): device_dir alone is needed by `status`
    from fedgate.server.trust.enrollment import enroll_device_dir, region_registry

    db = region.db or None
    wanted = region.nodes if profiles is None else profiles
    with region_registry(home, region.name, db) as registry:
        ids: list[str | None] = []
        new: dict[int, str] = {}  # index -> one-time secret, for the network path
        for index, profile in enumerate(wanted):
            directory = device_dir(home, region.name, index, kind)
            known = read_enrollment(directory)
            if known is not None and registry.get(known.device_id) is not None:
                ids.append(known.device_id)
            elif service_url is not None:
                new[index] = registry.issue_token(NETWORK_TOKEN_TTL)
                ids.append(None)
            else:
                ids.append(enroll_device_dir(home, region.name, directory, profile, db=db,
                                             force=True).device_id)  # fmt: skip
        if new:  # concurrently, as devices would: the service writes them in one transaction
            from concurrent.futures import ThreadPoolExecutor

            def enroll(index: int) -> str:
                directory = device_dir(home, region.name, index, kind)
                done = _enroll_with_secret(home, region.name, service_url, new[index], directory,
                                           wanted[index])  # fmt: skip
                return done.enrollment.device_id

            with ThreadPoolExecutor(min(len(new), PARALLEL_ENROLLMENTS)) as pool:
                for index, device_id in zip(new, pool.map(enroll, new), strict=True):
                    ids[index] = device_id
        enrolled = [i for i in ids if i is not None]
        for index in region.revoked:
            if index < len(enrolled) and not registry.get(enrolled[index]).revoked:
                registry.revoke(enrolled[index])
    return enrolled


def _enroll_with_secret(
    home: Path, region: str, url: str, secret: str, directory: Path, profile: str
) -> Any:
    """``directory`` enrolled over the network with the token made of ``secret``."""
    # heavy import (HTTP client): only when a device enrolls this way
    import time

    from fedgate.clients.enroll_client import enroll_over_network
    from fedgate.server.trust.enroll_run import network_token

    token = network_token(home, region, url, secret, time.time() + NETWORK_TOKEN_TTL)
    return enroll_over_network(token, profile, Path(directory), force=True)


def enroll_over_service(
    home: Path,
    region: RegionConfig,
    directory: Path,
    profile: str = "pi",
    url: str | None = None,
) -> Any:
    """Enroll ``directory`` as a device would, through the region's running enrollment service
    (``url``, default: the one ``fedgate up`` runs under ``home``): a network token issued
    with the home's operator key, then ``fedgate.clients.enroll_client.enroll_over_network``.
    Returns its ``NetEnrollment``; the device then joins with
    ``fedgate client join --device-home DIRECTORY``."""
    # heavy import (database): only when a device enrolls this way
    from fedgate.server.launch.transport import local_service_url
    from fedgate.server.trust.enrollment import EnrollmentError, region_registry

    url = url or local_service_url(home, region.name)
    if url is None:
        raise EnrollmentError(f"no enrollment service of region {region.name} runs under {home}")
    with region_registry(home, region.name, region.db or None, create=False) as registry:
        secret = registry.issue_token(NETWORK_TOKEN_TTL)
    return _enroll_with_secret(home, region.name, url, secret, directory, profile)
