"""The auditor's web view over a region kept in a real PostgreSQL server (the throwaway cluster
of ``conftest.py``): the overview shows it verified, a run page renders, a row edited by SQL
shows the chain broken at that event, and the view's database access is read-only there too."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fedgate.server.auditweb.app import create_app
from fedgate.server.auditweb.sources import discover
from fedgate.server.db.engine import make_engine
from tests.audit_home_kit import Built, build_region

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_home(pg_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Built, str]:  # type: ignore[no-untyped-def]
    url = pg_cluster.create_schema()
    built = Built(tmp_path_factory.mktemp("auditweb-pg") / "home")
    build_region(built.home, "pg", runs=1, rounds=3, clients=4, built=built,
                 db=url)  # fmt: skip
    build_region(built.home, "eu", runs=1, rounds=2, clients=3, built=built)
    return built, url


def _app(built: Built, url: str):  # type: ignore[no-untyped-def]
    return create_app(discover(built.home, {"pg": url}), ttl=0)


def test_a_postgresql_region_is_verified_and_its_run_renders(pg_home) -> None:  # type: ignore[no-untyped-def]
    built, url = pg_home
    client = TestClient(_app(built, url))
    chains = {c["status"]["source"]: c["status"] for c in client.get("/api/").json()["chains"]}
    assert chains["pg"]["status"] == "verified" and chains["eu"]["status"] == "verified"
    assert chains["pg"]["signatures_checked"] and chains["pg"]["signed_heads"] > 0
    run = built.runs["pg"][0]
    page = client.get(f"/runs/pg/{run}")
    assert page.status_code == 200
    assert page.text.count('class="point" data-series="val-acc"') == 3  # its rounds
    assert client.get(f"/api/runs/pg/{run}/rounds/2").json()["table"]["total"] == 4


def test_the_view_cannot_write_to_postgresql(pg_home) -> None:  # type: ignore[no-untyped-def]
    built, url = pg_home
    app = _app(built, url)
    engine = app.app.state.snapshots.engine("pg")
    with engine.connect() as conn:
        assert conn.execute(text("SHOW transaction_read_only")).scalar() == "on"
        with pytest.raises(DBAPIError, match="read-only transaction"):
            conn.execute(text("UPDATE events SET payload = payload WHERE seq = 1"))
    with engine.connect() as conn:  # a session that turns the default off is still read-only
        conn.execute(text("SET default_transaction_read_only = off"))
        conn.commit()
        with pytest.raises(DBAPIError, match="read-only transaction"):
            conn.execute(text("DELETE FROM events WHERE seq = 1"))
    assert TestClient(app).post("/").status_code == 405


def test_a_postgresql_row_edited_by_sql_is_broken_at_that_event(pg_home) -> None:  # type: ignore[no-untyped-def]
    built, url = pg_home
    writer = make_engine(url)
    with writer.begin() as conn:
        seq = conn.execute(text("SELECT min(seq) FROM events WHERE kind = 'update.rejected'"))
        seq = seq.scalar_one()
        conn.execute(text("UPDATE events SET payload = replace(payload, 'revoked-device', "
                          "'none') WHERE seq = :s"), {"s": seq})  # fmt: skip
    writer.dispose()
    client = TestClient(_app(built, url))
    chains = {c["status"]["source"]: c["status"] for c in client.get("/api/").json()["chains"]}
    assert chains["pg"]["status"] == "broken" and chains["pg"]["first_bad_seq"] == seq
    assert chains["pg"]["first_bad_kind"] == "update.rejected"
    assert chains["eu"]["status"] == "verified"
    row = client.get("/").text
    assert f"broken at event {seq} (update.rejected)" in row
