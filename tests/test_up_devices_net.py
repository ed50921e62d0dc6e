"""``fedgate up``'s devices enroll over the network (``enroll_region_devices`` with the
region's service URL, what ``bring_up_region`` calls once the service answers): each gets an
``fge1.`` token, pins the CA from it and enrolls through the real service over HTTPS; the
configured ones are revoked; a second ``up`` keeps them. No Flower: node keys are registered
at a real SuperLink in tests/test_net_enroll_live.py (its topology comes up this way)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from enroll_kit import serving, setup_region

from fedgate.clients.enroll_client import ca_path
from fedgate.clients.identity import read_enrollment
from fedgate.server.launch.config import RegionConfig
from fedgate.server.launch.local_devices import device_dir, enroll_region_devices
from fedgate.server.trust.pki import region_tls


def test_up_enrolls_each_device_over_the_service_with_a_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    setup_region(home, "eu")
    region = RegionConfig(name="eu", nodes=("phone", "pi", "pi"), revoked=(2,))
    with serving(home, "eu") as served:
        registry = served.settings.registry
        before = sum(1 for _ in registry.store.audit.events())
        ids = enroll_region_devices(home, region, service_url=served.url)
        events = list(registry.store.audit.events(start=before + 1))
        again = enroll_region_devices(home, region, service_url=served.url)
        after_again = sum(1 for _ in registry.store.audit.events())
    assert again == ids and len(set(ids)) == 3
    assert after_again == before + len(events)  # the second `up` enrolled nobody
    kinds = [e.kind for e in events]
    assert kinds.count("device.token_issued") == 3 and kinds.count("device.enrolled") == 3
    assert kinds[-1] == "device.revoked" and "enrollment.refused" not in kinds
    enrolled = [json.loads(e.payload) for e in events if e.kind == "device.enrolled"]
    profiles = {p["device"]: p["profile"] for p in enrolled}  # concurrent: in any order
    assert [profiles[i] for i in ids] == ["phone", "pi", "pi"]
    assert [d.revoked for d in map(registry.get, ids)] == [False, False, True]
    ca = region_tls(home, "eu").ca_cert.read_bytes()
    for index, device_id in enumerate(ids):
        directory = device_dir(home, "eu", index)
        enrollment = read_enrollment(directory)
        assert (enrollment.device_id, enrollment.service) == (device_id, served.url)
        assert enrollment.fleet == "127.0.0.1:1"  # from the service's trust bundle
        assert ca_path(directory, "eu").read_bytes() == ca  # pinned from the token
        for secret in ("node-auth.key", "device.key"):
            path = directory / secret
            assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600, path
