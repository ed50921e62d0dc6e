"""The auditor's views show what the chain says: an edited mirror table (runs, rounds, updates)
changes nothing shown and is flagged, with exit 2 under ``--strict``; both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fedgate.server.audit.store import Store
from fedgate.server.audit.views import (
    read_view,
    round_disagreements,
    rounds_disagreements,
    runs_disagreements,
)
from fedgate.server.db import make_engine, open_readonly
from tests.test_audit_anchor import Region, _cli

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# (table, column, a value the chain never holds, which view shows it)
EDITS = [
    ("updates", "verdict", "'accepted'", "show"),
    ("updates", "reason", "'none'", "show"),
    ("updates", "fate", "'kept'", "show"),
    ("updates", "num_examples", "999", "show"),
    ("updates", "weight", "7.5", "show"),
    ("rounds", "accepted", "3", "rounds"),
    ("rounds", "aggregated", "false", "rounds"),
    ("rounds", "note", "'fine'", "rounds"),
    ("runs", "launched_by", "'mallory'", "runs"),
    ("runs", "status", "'failed'", "runs"),
    ("runs", "region", "'us'", "runs"),
]


@pytest.fixture
def region(db_url: str, tmp_path, monkeypatch) -> Region:
    return Region(db_url, tmp_path / "home", monkeypatch)


@contextmanager
def _edited(url: str, table: str, column: str, value: str, row: int) -> Iterator[bool]:
    """Set ``column`` of one row of ``table`` for the block (yields whether its value changed),
    then put the old value back."""
    engine = make_engine(url)
    with engine.begin() as conn:
        col = "round" if table == "rounds" else "id"  # rounds: keyed by (run_id, round)
        keys = sorted(r[0] for r in conn.exec_driver_sql(f"SELECT {col} FROM {table}"))
        key = keys[row % len(keys)]
        where = f"WHERE {col} = {key!r}" if isinstance(key, str) else f"WHERE {col} = {key}"
        old = conn.execute(text(f"SELECT {column} FROM {table} {where}")).scalar_one()
        conn.exec_driver_sql(f"UPDATE {table} SET {column} = {value} {where}")
        new = conn.execute(text(f"SELECT {column} FROM {table} {where}")).scalar_one()
    try:
        yield old != new
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {table} SET {column} = :old {where}"), {"old": old})


def _views(region: Region) -> dict[str, str]:
    db = ("--db", region.url)
    return {
        "runs": _cli("runs", *db, "--json").stdout,
        "rounds": _cli("rounds", *db, "--run", "7", "--json").stdout,
        "show": _cli("show", *db, "--run", "7", "--round", "2", "--json").stdout,
    }


def test_a_rejected_update_edited_to_accepted_is_shown_rejected_and_flagged(region) -> None:
    db = ("--db", region.url)
    before = _views(region)
    with make_engine(region.url).begin() as conn:
        conn.exec_driver_sql(
            "UPDATE updates SET verdict = 'accepted', reason = '' WHERE node_id = '13'"
        )
        conn.exec_driver_sql("UPDATE runs SET launched_by = 'mallory'")
    assert _views(region) == before  # what the auditor sees is what the chain says
    show = _cli("show", *db, "--run", "7", "--round", "2")
    assert show.exit_code == 0 and "bad-signature" in show.stdout
    assert "disagrees: updates run 7 round 2 node 13: verdict is 'accepted'" in show.output
    assert _cli("show", *db, "--run", "7", "--round", "2", "--strict").exit_code == 2
    runs = _cli("runs", *db)
    assert "alice" in runs.stdout and "mallory" not in runs.stdout
    assert "launched_by is 'mallory' in the table" in runs.output
    assert _cli("runs", *db, "--strict").exit_code == 2
    assert _cli("rounds", *db, "--run", "7", "--strict").exit_code == 0  # rounds untouched


@SETTINGS
@given(edit=st.sampled_from(EDITS), row=st.integers(0, 2))
def test_views_never_show_a_value_the_chain_does_not_hold(region, edit, row) -> None:
    region.restore()
    honest = read_view(open_readonly(region.url))
    table, column, value, verb = edit
    with _edited(region.url, table, column, value, row) as changed:
        assert read_view(open_readonly(region.url)) == honest
        shown = json.loads(_views(region)[verb])
        assert shown == json.loads(_views_of(honest, verb))
        store = Store(open_readonly(region.url))
        found = runs_disagreements(honest, store) + rounds_disagreements(honest, store, "7")
        for rnd in (1, 2, 3):
            found += round_disagreements(honest, store, "7", rnd)
        assert bool(found) == changed, (edit, found)
        if changed:
            assert any(f" {column} is " in line for line in found), found


def _views_of(view, verb: str) -> str:
    from fedgate.server.cli.audit import _plain

    if verb == "runs":
        return json.dumps(_plain(list(view.runs.values())))
    if verb == "rounds":
        return json.dumps(_plain(view.run_rounds("7")))
    info, updates = view.round_detail("7", 2)
    return json.dumps(_plain({"round": info, "clients": updates}))
