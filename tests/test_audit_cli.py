"""``fedgate audit`` verbs through typer's CliRunner (registered on a local app)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.audit.store import Store
from fedgate.server.cli.audit import register
from fedgate.server.db import default_url

VERBS = ("verify", "runs", "rounds", "show", "export", "serve", "report")


def _cli(*args: str, env: dict[str, str] | None = None):
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    return CliRunner().invoke(app, ["audit", *args], env=env)


@pytest.fixture
def region(db_url: str, tmp_path):
    """A region database with one run of two rounds; the region key under ``home``."""
    home = tmp_path / "home"
    store = Store.open(db_url, signer=ensure_region_key(home, "eu"))
    store.record_run("7", "eu", "alice", {"rounds": 2})
    for rnd in (1, 2):
        store.record_round(
            "7",
            {
                "round": rnd,
                "sampled": 3,
                "aggregated": True,
                "metrics": {"val-acc": 0.5 + rnd / 10},
                "clients": [
                    {
                        "node_id": 11,
                        "accepted": True,
                        "device_id": "d" * 64,
                        "num_examples": 80,
                        "fate": "kept",
                        "score": 0.25,
                        "weight": 0.5,
                    },
                    {
                        "node_id": 12,
                        "accepted": True,
                        "device_id": "e" * 64,
                        "num_examples": 90,
                        "fate": "trimmed",
                        "score": 4.5,
                        "weight": 0.0,
                    },
                    {
                        "node_id": 13,
                        "accepted": False,
                        "reason": "bad-signature",
                        "detail": "signature does not verify",
                    },
                ],
            },
        )
    store.finish_run("7")
    return ["--db", db_url], home


def test_every_verb_has_help() -> None:
    assert _cli("--help").exit_code == 0
    for verb in VERBS:
        result = _cli(verb, "--help")
        assert result.exit_code == 0 and "--db" in result.output, verb


def test_runs_rounds_show(region) -> None:
    db, _ = region
    runs = _cli("runs", *db)
    assert runs.exit_code == 0 and "alice" in runs.output and "finished" in runs.output
    [run] = json.loads(_cli("runs", *db, "--json").stdout)
    assert (run["id"], run["rounds"], run["config"]) == ("7", 2, {"rounds": 2})
    rounds = json.loads(_cli("rounds", *db, "--run", "7", "--json").stdout)
    assert [(r["round"], r["accepted"], r["rejected"]) for r in rounds] == [(1, 2, 1), (2, 2, 1)]
    assert rounds[1]["metrics"] == {"val-acc": 0.7}
    table = _cli("rounds", *db, "--run", "7").output
    assert "val-acc" in table and "0.6" in table and "rounds" in table
    show = _cli("show", *db, "--run", "7", "--round", "2")
    assert show.exit_code == 0
    for text in ("bad-signature", "trimmed", "kept", "rejected", "4.5"):
        assert text in show.output
    detail = json.loads(_cli("show", *db, "--run", "7", "--round", "2", "--json").stdout)
    fates = {
        c["node_id"]: (c["verdict"], c["reason"], c["fate"], c["score"]) for c in detail["clients"]
    }
    assert fates == {
        "11": ("accepted", "", "kept", 0.25),
        "12": ("accepted", "", "trimmed", 4.5),
        "13": ("rejected", "bad-signature", "", None),
    }


def test_missing_things_are_clear_errors(region, tmp_path) -> None:
    db, _ = region
    for args, words in (
        (("rounds", *db, "--run", "nope"), "no run nope"),
        (("show", *db, "--run", "7", "--round", "9"), "no round 9"),
        (("runs", "--db", f"sqlite:///{tmp_path / 'missing.db'}"), "no database at"),
        (("runs", "--db", "oracle://x@y/z"), "unsupported database"),
        (("runs", "--db", "::"), "bad database URL"),
        (("verify", *db), "no public keys"),
        (("export", *db, "--format", "xml"), "unknown format"),
        (("verify", "--export", str(tmp_path / "none.jsonl"), "--no-signatures"), "no export"),
    ):
        result = _cli(*args, env={"FEDGATE_DB": ""})
        assert result.exit_code == 1, (args, result.output)  # bad input (fedgate.errors)
        assert words in result.output and "Traceback" not in result.output


def test_export_then_verify_offline(region, tmp_path) -> None:
    db, home = region
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"audit.{fmt}"
        result = _cli("export", *db, "--format", fmt, "--out", str(out))
        assert result.exit_code == 0, result.output
        ok = _cli("verify", "--export", str(out), "--pubkeys", str(home / "keys"), "--json")
        report = json.loads(ok.stdout)
        assert ok.exit_code == 0 and report["ok"] and report["unsigned_tail"] == 0
    stdout = _cli("export", *db)
    assert stdout.output.splitlines()[0].startswith('{"record":"chain"')


def test_default_database_and_key_from_home(tmp_path) -> None:
    home = tmp_path / "home"
    store = Store.open(default_url(home, "eu"), signer=ensure_region_key(home, "eu"))
    store.record_run("1", "eu", "carol", {})
    store.finish_run("1")  # a run not ended verifies as IN PROGRESS
    env = {"FEDGATE_DB": ""}
    result = _cli("verify", "--home", str(home), "--region", "eu", env=env)
    assert result.exit_code == 0 and "OK" in result.output, result.output
    assert "carol" in _cli("runs", "--home", str(home), "--region", "eu", env=env).output


def test_show_names_a_refused_updates_claimed_device_and_the_transport_errors(
    db_url: str, tmp_path
) -> None:
    store = Store.open(db_url, signer=ensure_region_key(tmp_path / "home", "eu"))
    store.record_run("8", "eu", "alice", {"rounds": 1})
    refused = {"node_id": 21, "accepted": False, "reason": "wrong-shape",
               "detail": "payload shape", "claimed_device_id": "f" * 64}  # fmt: skip
    error = {"code": 3, "reason": "objects unavailable"}
    store.record_round("8", {"round": 1, "sampled": 1, "clients": [refused],
                             "transport_errors": [error]})  # fmt: skip
    store.finish_run("8")
    db = ["--db", db_url]
    show = _cli("show", *db, "--run", "8", "--round", "1")
    assert show.exit_code == 0, show.output
    assert "transport errors 1" in show.output
    detail = json.loads(_cli("show", *db, "--run", "8", "--round", "1", "--json").stdout)
    [client] = detail["clients"]
    assert (client["device_id"], client["claimed_device_id"]) == ("", "f" * 64)
    [row] = json.loads(_cli("rounds", *db, "--run", "8", "--json").stdout)
    assert row["transport_errors"] == 1 and row["sampled"] == 1
