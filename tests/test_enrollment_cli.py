"""CLI verbs: enroll-token, enroll, devices list / revoke (clean errors, no tracebacks)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedgate.clients.identity import KEY_FILE, load_identity
from fedgate.crypto import generate_key, save_public_key
from fedgate.server.cli_devices import register_client, register_region
from fedgate.server.enrollment import region_registry


@pytest.fixture
def cli():
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        return result

    return run


def token(cli, home: Path, region: str = "eu") -> str:
    return cli("enroll-token", "--region", region, "--home", home).stdout.strip().splitlines()[0]


def test_token_enroll_list_revoke(cli, tmp_path: Path) -> None:
    home, dev = tmp_path / "home", tmp_path / "dev"
    tok = token(cli, home)
    assert tok.startswith("fgt_")
    out = cli(
        "enroll",
        "--token",
        tok,
        "--region",
        "eu",
        "--home",
        home,
        "--device-dir",
        dev,
        "--profile",
        "pi",
    ).stdout
    device_id = load_identity(dev).device_id
    assert device_id in out
    assert stat.S_IMODE((dev / KEY_FILE).stat().st_mode) == 0o600
    listed = json.loads(cli("devices", "list", "--region", "eu", "--home", home, "--json").stdout)
    assert [(d["device_id"], d["profile"], d["revoked"]) for d in listed] == [
        (device_id, "pi", False)
    ]
    assert device_id[:16] in cli("devices", "list", "--region", "eu", "--home", home).stdout
    cli("devices", "revoke", device_id[:12], "--region", "eu", "--home", home)
    assert region_registry(home, "eu").get(device_id).revoked


def test_existing_key_is_reused_and_region_anchor_stored(cli, tmp_path: Path) -> None:
    home, dev = tmp_path / "home", tmp_path / "dev"
    from fedgate.clients.identity import create_identity

    mine = create_identity(dev)
    anchor = tmp_path / "region.pub"
    save_public_key(generate_key(), anchor)
    cli(
        "enroll", "--token", token(cli, home), "--region", "eu", "--home", home,
        "--device-dir", dev, "--region-key", anchor,
    )  # fmt: skip
    assert region_registry(home, "eu").get(mine.device_id) is not None
    assert (dev / "anchors" / "eu.pub").read_text() == anchor.read_text()


def test_bad_token_leaves_no_key_behind(cli, tmp_path: Path) -> None:
    home, dev = tmp_path / "home", tmp_path / "dev"
    result = cli(
        "enroll", "--token", "fgt_wrong", "--region", "eu", "--home", home, "--device-dir", dev,
        code=1,
    )  # fmt: skip
    assert "error: unknown enrollment token" in result.output
    assert not (dev / KEY_FILE).exists()


def test_a_device_belongs_to_one_region(cli, tmp_path: Path) -> None:
    home, dev = tmp_path / "home", tmp_path / "dev"
    args = ("--home", home, "--device-dir", dev)
    cli("enroll", "--token", token(cli, home), "--region", "eu", *args)
    first = load_identity(dev).device_id
    result = cli("enroll", "--token", token(cli, home, "us"), "--region", "us", *args, code=1)
    assert "already enrolled in region eu" in result.output
    # --force makes a new key for the new region; the old key is gone from this device
    cli("enroll", "--token", token(cli, home, "us"), "--region", "us", *args, "--force")
    assert load_identity(dev).device_id != first
    assert region_registry(home, "us").get(load_identity(dev).device_id) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enroll-token", "--region", "e u"], "simple identifier"),
        (["enroll-token", "--region", "eu", "--ttl-hours", "0"], "positive"),
        (["devices", "revoke", "abc", "--region", "eu"], "at least 8"),
        (["devices", "revoke", "abcdefabcdef", "--region", "eu"], "no device"),
        (
            ["enroll", "--token", "t", "--region", "eu", "--device-dir", "d", "--profile", "x"],
            "unknown profile",
        ),
    ],
)
def test_clean_errors(cli, tmp_path: Path, args: list[str], message: str) -> None:
    result = cli(*args, "--home", tmp_path, code=1)
    assert message in result.output and result.output.startswith("error:")


def test_corrupt_registry_is_a_clean_error(cli, tmp_path: Path) -> None:
    path = tmp_path / "regions" / "eu" / "devices.json"
    path.parent.mkdir(parents=True)
    path.write_text("{nope")
    result = cli("devices", "list", "--region", "eu", "--home", tmp_path, code=1)
    assert "not a fedgate device registry" in result.output


@pytest.mark.parametrize(
    "verb", [["enroll-token"], ["enroll"], ["devices"], ["devices", "list"], ["devices", "revoke"]]
)
def test_help(cli, verb: list[str]) -> None:
    assert "Usage" in cli(*verb, "--help").output


def test_missing_options_are_usage_errors(cli, tmp_path: Path) -> None:
    cli("enroll-token", "--home", tmp_path, code=2)
