"""Shared fixtures: a throwaway PostgreSQL cluster and the ``db_url`` fixture.

``db_url`` runs a test once on a fresh SQLite file and once on a fresh PostgreSQL
schema of one session-wide cluster (``fedgate.server.db.pgcluster``). Missing
PostgreSQL binaries FAIL the PostgreSQL cases with a clear message; run
``.ci/postgres.sh`` to install them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedgate.server.db.pgcluster import PgCluster, PgClusterError


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    try:
        cluster = PgCluster(fast=True).start()
    except PgClusterError as exc:
        pytest.fail(f"PostgreSQL is required for these tests: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty PostgreSQL schema (a database of its own, as far as fedgate can tell)."""
    return pg_cluster.create_schema()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh database URL, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fedgate.db'}"
    return request.getfixturevalue("pg_url")
