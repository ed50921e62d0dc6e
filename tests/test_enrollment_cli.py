"""CLI verbs: fedgate region enroll-token / devices / revoke, fedgate client enroll."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedgate.clients.identity import KEY_FILE, create_identity, load_identity, read_enrollment
from fedgate.crypto import generate_key, save_public_key
from fedgate.server.audit.keys import ensure_region_key, region_pub_path
from fedgate.server.cli.devices import register_client, register_region
from fedgate.server.trust.enrollment import region_registry


@pytest.fixture
def cli(monkeypatch):
    """``fedgate`` with the region and client verbs, as ``fedgate.cli`` wires them."""
    monkeypatch.delenv("FEDGATE_DB", raising=False)
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    region_app, client_app = typer.Typer(), typer.Typer()
    register_region(region_app)
    register_client(client_app)
    app.add_typer(region_app, name="region")
    app.add_typer(client_app, name="client")
    runner = CliRunner()

    def run(*args: object, code: int = 0, env: dict[str, str] | None = None):
        result = runner.invoke(app, [str(a) for a in args], env=env)
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        return result

    return run


def token(cli, home: Path, region: str = "eu", *extra: object) -> str:
    ensure_region_key(home, region)  # what `fedgate region init` / `fedgate up` do first
    out = cli("region", "enroll-token", "--region", region, "--home", home, *extra)
    return out.stdout.strip().splitlines()[0]


def test_token_enroll_list_revoke(cli, tmp_path: Path, db_url: str) -> None:
    home, dev = tmp_path / "home", tmp_path / "dev"
    db = ("--db", db_url)
    tok = token(cli, home, "eu", *db)
    assert tok.startswith("fgt_")
    result = cli(
        "client", "enroll", "--token", tok, "--region", "eu", "--home", home, *db,
        "--device-dir", dev, "--profile", "pi",
    )  # fmt: skip
    device_id = load_identity(dev).device_id
    assert device_id in result.stdout and "mode 0600" in result.stderr
    assert stat.S_IMODE((dev / KEY_FILE).stat().st_mode) == 0o600
    # the trust anchor is the region server key of this home
    assert (dev / "anchors" / "eu.pub").read_text() == region_pub_path(home, "eu").read_text()
    listed = json.loads(
        cli("region", "devices", "--region", "eu", "--home", home, *db, "--json").stdout
    )
    assert [(d["device_id"], d["profile"], d["revoked"]) for d in listed] == [
        (device_id, "pi", False)
    ]
    table = cli("region", "devices", "--region", "eu", "--home", home, *db).stdout
    assert device_id[:16] in table and "active" in table
    out = cli("region", "revoke", device_id[:12], "--region", "eu", "--home", home, *db).stdout
    assert f"revoked device {device_id}" in out
    with region_registry(home, "eu", db_url) as registry:
        assert registry.get(device_id).revoked
    assert "revoked" in cli("region", "devices", "--region", "eu", "--home", home, *db).stdout
    again = cli(
        "client", "enroll", "--token", tok, "--region", "eu", "--home", home, *db,
        "--device-dir", tmp_path / "dev2", "--profile", "pi", code=1,
    )  # fmt: skip
    assert "error: this enrollment token has already been used" in again.output


def test_home_defaults_to_fedgate_home(cli, tmp_path: Path) -> None:
    env = {"FEDGATE_HOME": str(tmp_path / "home")}
    ensure_region_key(tmp_path / "home", "eu")  # `fedgate region init` / `up` did this
    tok = cli("region", "enroll-token", "--region", "eu", env=env).stdout.strip()
    cli("client", "enroll", "--token", tok, "--region", "eu", "--profile", "phone", env=env)
    device = load_identity(tmp_path / "home" / "device")
    assert (tmp_path / "home" / "region-eu.db").is_file()
    listed = json.loads(cli("region", "devices", "--region", "eu", "--json", env=env).stdout)
    assert [d["device_id"] for d in listed] == [device.device_id]


def test_no_devices_yet(cli, tmp_path: Path) -> None:
    ensure_region_key(tmp_path, "eu")
    out = cli("region", "devices", "--region", "eu", "--home", tmp_path).stdout
    assert "no devices enrolled in region eu" in out
    assert (
        json.loads(cli("region", "devices", "--region", "eu", "--home", tmp_path, "--json").stdout)
        == []
    )


def test_existing_key_is_reused_and_given_region_key_trusted(cli, tmp_path: Path) -> None:
    home, dev = tmp_path / "home", tmp_path / "dev"
    mine = create_identity(dev)
    anchor = tmp_path / "region.pub"
    save_public_key(generate_key(), anchor)
    result = cli(
        "client", "enroll", "--token", token(cli, home), "--region", "eu", "--home", home,
        "--device-dir", dev, "--region-key", anchor, "--profile", "phone",
    )  # fmt: skip
    assert "new device key" not in result.stderr
    with region_registry(home, "eu") as registry:
        assert registry.get(mine.device_id).profile == "phone"
    assert (dev / "anchors" / "eu.pub").read_text() == anchor.read_text()


def test_bad_token_leaves_no_key_behind(cli, tmp_path: Path) -> None:
    home, dev = tmp_path / "home", tmp_path / "dev"
    token(cli, home)  # the region exists (key, database); this token is not the one given
    result = cli(
        "client", "enroll", "--token", "fgt_wrong", "--region", "eu", "--home", home,
        "--device-dir", dev, "--profile", "pi", code=1,
    )  # fmt: skip
    assert "error: unknown enrollment token for region eu" in result.output
    assert not (dev / KEY_FILE).exists() and read_enrollment(dev) is None


def test_a_device_belongs_to_one_region(cli, tmp_path: Path) -> None:
    home, dev = tmp_path / "home", tmp_path / "dev"
    args = ("--home", home, "--device-dir", dev, "--profile", "pi")
    cli("client", "enroll", "--token", token(cli, home), "--region", "eu", *args)
    first = load_identity(dev).device_id
    us_token = token(cli, home, "us")
    result = cli("client", "enroll", "--token", us_token, "--region", "us", *args, code=1)
    assert "already enrolled in region eu" in result.output
    assert load_identity(dev).device_id == first
    # --force makes a new key for the new region; the old key is gone from this device
    moved = cli("client", "enroll", "--token", us_token, "--region", "us", *args, "--force")
    assert f"the old key {first[:16]} stays enrolled in region eu" in moved.stderr
    second = load_identity(dev).device_id
    assert second != first
    with region_registry(home, "us") as us, region_registry(home, "eu") as eu:
        assert us.get(second) is not None and us.get(first) is None
        assert eu.get(first) is not None and eu.get(second) is None


def test_missing_region_key_names_the_fix(cli, tmp_path: Path) -> None:
    result = cli(
        "client", "enroll", "--token", "fgt_x", "--region", "eu", "--home", tmp_path,
        "--profile", "pi", code=1,
    )  # fmt: skip
    assert "error: no public key of region eu" in result.output
    assert "--region-key" in result.output and "fedgate region init" in result.output
    assert not (tmp_path / "device" / KEY_FILE).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["region", "enroll-token", "--region", "e u"], "simple identifier"),
        (["region", "enroll-token", "--region", "eu", "--ttl-hours", "0"], "positive"),
        (["region", "enroll-token", "--region", "eu", "--ttl-hours", "1e9"], "at most 720"),
        (["region", "revoke", "abc", "--region", "eu"], "at least 8"),
        (["region", "revoke", "abcdefabcdef", "--region", "eu"], "no device"),
        (["region", "devices", "--region", "eu", "--db", "mysql://u@h/d"], "unsupported database"),
        (["region", "devices", "--region", "eu", "--db", "::nope"], "bad database URL"),
        (
            ["region", "devices", "--region", "eu", "--db", "postgresql://x@127.0.0.1:1/none"],
            "cannot open database",
        ),
        (
            ["client", "enroll", "--token", "t", "--region", "eu", "--profile", "tablet"],
            "unknown profile 'tablet'",
        ),
        (
            ["client", "enroll", "--token", "t", "--region", "eu", "--profile", "pi",
             "--region-key", "missing.pub"],
            "No such file",
        ),
    ],
)  # fmt: skip
def test_clean_errors(cli, tmp_path: Path, args: list[str], message: str) -> None:
    ensure_region_key(tmp_path, "eu")  # a region set up here: the error is the one named
    result = cli(*args, "--home", tmp_path, code=1)
    assert message in result.output and result.output.startswith("error:")


def test_corrupt_region_key_is_a_clean_error(cli, tmp_path: Path) -> None:
    bad = tmp_path / "region.pub"
    bad.write_text("not hex")
    result = cli(
        "client", "enroll", "--token", "t", "--region", "eu", "--home", tmp_path,
        "--profile", "pi", "--region-key", bad, code=1,
    )  # fmt: skip
    assert "not a hex-encoded Ed25519 public key" in result.output


@pytest.mark.parametrize(
    "verb",
    [["region", "enroll-token"], ["region", "devices"], ["region", "revoke"], ["client", "enroll"]],
)
def test_help(cli, verb: list[str]) -> None:
    assert "Usage" in cli(*verb, "--help").output


def test_missing_options_are_usage_errors(cli, tmp_path: Path) -> None:
    cli("region", "enroll-token", "--home", tmp_path, code=2)
    cli("client", "enroll", "--region", "eu", "--token", "t", "--home", tmp_path, code=2)
    cli("region", "revoke", "--region", "eu", "--home", tmp_path, code=2)


@pytest.mark.parametrize(
    "verb",
    [
        ["region", "devices", "--region", "eu"],
        ["region", "enroll-token", "--region", "eu"],
        ["region", "revoke", "0123456789abcdef", "--region", "eu"],
    ],
)
def test_operator_verbs_on_a_mistyped_home_create_nothing(cli, tmp_path: Path, verb) -> None:
    """A --home where the region was never set up is a one-line error (exit 1) that names the
    way out; no home, database or region key appears."""
    typo = tmp_path / "hmoe"
    result = cli(*verb, "--home", typo, code=1)
    assert "not set up under" in result.output and "fedgate region init" in result.output
    assert not typo.exists()


def test_listing_an_initialised_region_creates_no_database(cli, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ensure_region_key(home, "eu")
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    out = cli("region", "devices", "--region", "eu", "--home", home).stdout
    assert "no devices enrolled in region eu" in out
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before
