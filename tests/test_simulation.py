"""`fedgate region run --engine simulation` tells the truth.

A simulated run's virtual devices, run, rounds and audit chain live in the run's own
database, never in the region's.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3

from fedgate.server.simulation import RUN_DB, enroll_virtual_devices, write_run_config


def test_virtual_devices_are_enrolled_in_the_runs_own_database(tmp_path) -> None:
    from fedgate.server.config import default_federation

    fed = default_federation()
    eu = dataclasses.replace(fed.region("eu"), revoked=(1,))
    home, out_dir = tmp_path / "home", tmp_path / "home" / "run"
    out_dir.mkdir(parents=True)
    ids = enroll_virtual_devices(home, eu, out_dir, 3)
    assert len(set(ids)) == 3
    conn = sqlite3.connect(f"file:{out_dir / RUN_DB}?mode=ro", uri=True)
    rows = conn.execute("SELECT device_id, status FROM devices ORDER BY device_id").fetchall()
    conn.close()
    assert rows == sorted((i, "revoked" if i == ids[1] else "active") for i in ids)
    assert sorted(p.name for p in (out_dir / "devices").iterdir()) == ["sim-0", "sim-1", "sim-2"]
    assert not (home / "region-eu.db").exists() and not (home / "regions").exists()
    config = json.loads(write_run_config(fed, eu, home, out_dir).read_text())
    assert config["db"] == f"sqlite:///{out_dir.resolve() / RUN_DB}"
