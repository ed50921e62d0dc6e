"""Bad input gets one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from fedgate import cli
from fedgate.server.launch import topology
from fedgate.server.launch.config import (
    DEFAULT_FEDERATION_TOML,
    ConfigError,
    default_federation,
    load_federation,
    parse_federation,
)
from fedgate.server.launch.processes import ProcessTable, TopologyError, free_port_block

cli._register()
RUNNER = CliRunner()


def run(*args: object) -> tuple[int, str]:
    result = RUNNER.invoke(cli.app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_every_verb_has_help() -> None:
    root = get_command(cli.app)
    stack = [([], root)]
    seen = 0
    while stack:
        path, command = stack.pop()
        code, out = run(*path, "--help")
        assert code == 0 and "Usage" in out, path
        seen += 1
        for name, sub in getattr(command, "commands", {}).items():
            stack.append(([*path, name], sub))
    assert seen >= 15


def test_missing_and_malformed_config(tmp_path: Path) -> None:
    code, out = run("up", "--home", tmp_path, "--config", tmp_path / "none.toml")
    assert code == 1 and "not found" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[regions.eu\nrounds = 3")
    code, out = run("up", "--home", tmp_path, "--config", bad)
    assert code == 1 and "not valid TOML" in out


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("rounds = 5", "rounds = 0", 1), "rounds must be >= 1"),
        (("rounds = 5", "rounds = 'many'", 1), "rounds must be int"),
        (("rounds = 5", "roundz = 5", 1), "unknown key"),
        (
            ('model = "mlp-64-32-10"', 'model = "gpt"', 1),
            "model must be one of mlp-64-32-10, cnn-small-v1, got 'gpt'",
        ),
        (("revoked = [5]", "revoked = [9]", 1), "out of range"),
        (('4 = "sign-flip"', '4 = "meteor"', 1), "unknown attack profile"),
        (("port = 9200", "port = 9103", 1), "overlap at port"),
        (("min-clients = 3", "min-clients = 8", 1), "must be >= min-clients"),
    ],
)
def test_config_errors_name_the_setting(edit: tuple, message: str) -> None:
    old, new, count = edit
    assert old in DEFAULT_FEDERATION_TOML
    import tomllib

    with pytest.raises(ConfigError, match=message):
        parse_federation(tomllib.loads(DEFAULT_FEDERATION_TOML.replace(old, new, count)))


def test_unknown_region_is_named(tmp_path: Path) -> None:
    code, out = run("region", "run", "--region", "apac", "--home", tmp_path)
    assert code == 1 and "unknown region 'apac'" in out and "eu, us" in out
    with pytest.raises(ConfigError, match="unknown region"):
        default_federation().region("mars")


def test_deployment_run_needs_the_topology_up(tmp_path: Path) -> None:
    code, out = run("region", "run", "--region", "eu", "--home", tmp_path)
    assert code == 3 and "fedgate up" in out  # a service unavailable (fedgate.errors)


def _one_region(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "federation.toml"
    config.write_text(
        f"[regions.eu]\nrounds = 1\nclients-per-round = 1\nmin-clients = 1\nport = {port}\n"
        'nodes = ["phone"]\naggregator = "mean"\nf = 0\npre = ""\n'
    )
    load_federation(config)
    return config


def test_port_in_use_is_refused(tmp_path: Path) -> None:
    port = free_port_block(12)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        code, out = run("up", "--home", tmp_path / "h", "--config", _one_region(tmp_path, port))
    assert code == 1 and "already in use" in out and str(port) in out
    assert not ProcessTable(tmp_path / "h").running()


def test_superlink_that_does_not_come_up_names_its_log(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(topology, "SUPERLINK_LAUNCHER", ("/bin/false",))
    fed = load_federation(_one_region(tmp_path, free_port_block(12)))
    home = tmp_path / "h"
    with pytest.raises(TopologyError, match=r"SuperLink eu exited during start-up; read its log"):
        topology.up(fed, home, timeout=20, echo=lambda *_: None)
    assert not ProcessTable(home).running()


def test_typer_app_is_not_pretty_printing_exceptions() -> None:
    assert isinstance(cli.app, typer.Typer)
    assert cli.app.pretty_exceptions_enable is False


def test_every_verb_runs_inside_the_one_error_handler() -> None:
    from fedgate.cli import _register
    from fedgate.cli import app as root
    from fedgate.server.cli.common import GUARDED

    _register()
    seen: list[str] = []

    def walk(app: typer.Typer, prefix: str) -> None:
        for command in app.registered_commands:
            name = f"{prefix} {command.name or command.callback.__name__}"
            assert getattr(command.callback, GUARDED, False), f"{name} bypasses cli_errors"
            seen.append(name)
        for group in app.registered_groups:
            walk(group.typer_instance, f"{prefix} {group.name}")

    walk(root, "fedgate")
    assert {"fedgate audit verify", "fedgate region init", "fedgate client join"} <= set(seen)
    assert len(seen) >= 20, seen


def test_exit_codes_follow_the_error_kind(tmp_path: Path) -> None:
    import sqlalchemy.exc

    from fedgate.errors import UnavailableError, UsageError, VerificationError
    from fedgate.server.cli.common import friendly

    def failing(exc: BaseException):
        @friendly
        def verb() -> None:
            raise exc

        with pytest.raises(typer.Exit) as exited:
            verb()
        return exited.value.exit_code

    assert failing(UsageError("bad option")) == 1
    assert failing(VerificationError("bad signature")) == 2
    assert failing(UnavailableError("database down")) == 3
    assert failing(FileNotFoundError(2, "No such file", str(tmp_path / "x"))) == 1
    assert failing(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("refused"))) == 3
    not_a_db = sqlalchemy.exc.DatabaseError("SELECT 1", {}, Exception("file is not a database"))
    assert failing(not_a_db) == 1
    assert failing(KeyboardInterrupt()) == 130
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        failing(ZeroDivisionError())


def test_audit_of_a_file_that_is_not_a_database_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "region-eu.db"
    bogus.write_text("not a database\n")
    for verb in (["verify", "--no-signatures"], ["runs"]):
        code, out = run("audit", *verb, "--db", f"sqlite:///{bogus}")
        assert code == 1 and "not a database" in out and len(out.strip().splitlines()) == 1, out
