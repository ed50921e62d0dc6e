"""The typed run specification and the load-time checks of a federation config: every bad
value is refused when the file is read (or the command line given), in one line naming the
key, where it is and what it allows; never a traceback, never a failure mid-run."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedgate import cli
from fedgate.errors import UsageError
from fedgate.server.launch.config import (
    DEFAULT_FEDERATION_TOML,
    ConfigError,
    RegionConfig,
    default_federation,
    load_federation,
    parse_federation,
    validate_region,
)
from fedgate.server.launch.runner import run_config, run_spec
from fedgate.server.region.run_spec import MAX_SEED, RUN_CONFIG_KEYS, RunSpec

cli._register()
RUNNER = CliRunner()
NAN, INF = float("nan"), float("inf")


def default_data() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_FEDERATION_TOML)


# (table, key, bad value, what the one error line must say); region eu has 7 nodes, port 9100
BAD_VALUES = [
    ("federation", "alpha", NAN, "alpha must be a finite number > 0, got nan"),
    ("federation", "alpha", INF, "alpha must be a finite number > 0, got inf"),
    ("federation", "alpha", 0.0, "alpha must be a finite number > 0, got 0.0"),
    ("federation", "seed", -1, f"seed must be in 0..{MAX_SEED}, got -1"),
    ("federation", "seed", MAX_SEED + 1, f"seed must be in 0..{MAX_SEED}, got {MAX_SEED + 1}"),
    ("federation", "sead", 1, "unknown key(s) ['sead']"),
    ("eu", "lr", NAN, "lr must be a finite number > 0, got nan"),
    ("eu", "lr", -0.1, "lr must be a finite number > 0, got -0.1"),
    ("eu", "lr", 0, "lr must be a finite number > 0, got 0.0"),
    ("eu", "max-examples", 0, "max-examples must be >= 1, got 0"),
    ("eu", "max-examples", -5, "max-examples must be >= 1, got -5"),
    ("eu", "round-timeout", 0, "round-timeout must be a finite number > 0, got 0.0"),
    ("eu", "round-timeout", -1.5, "round-timeout must be a finite number > 0, got -1.5"),
    ("eu", "round-timeout", INF, "round-timeout must be a finite number > 0, got inf"),
    ("eu", "rounds", 0, "rounds must be >= 1, got 0"),
    ("eu", "f", -1, "f must be >= 0, got -1"),
    ("eu", "nodes", [["phone"]], "unknown device profile(s) [['phone']]"),
    ("eu", "db", "nowhere://x", "db must be empty (SQLite under the fedgate home) or a sqlite:///"),
    ("eu", "db", "nowhere://x", "got a URL of scheme 'nowhere'"),
    ("eu", "db", "fedgate.db", "got no URL"),
    ("eu", "port", 65530, "port must be in 1024..65519 (the region uses ports port..port+16"),
    ("eu", "port", 1023, "port must be in 1024..65519"),
]


@pytest.mark.parametrize(("table", "key", "value", "message"), BAD_VALUES)
def test_a_bad_value_is_refused_at_load_time_in_one_line(
    table: str, key: str, value: Any, message: str
) -> None:
    data = default_data()
    (data["federation"] if table == "federation" else data["regions"][table])[key] = value
    with pytest.raises(ConfigError) as refused:
        parse_federation(data, "fed.toml")
    text = str(refused.value)
    where = "fed.toml [federation]" if table == "federation" else "fed.toml [regions.eu]"
    assert text.startswith(where), text
    assert message in text, text
    assert "\n" not in text


def test_a_database_url_in_an_error_never_shows_its_password() -> None:
    data = default_data()
    data["regions"]["eu"]["db"] = "mysql://fedgate:hunter2@db.example/fedgate"
    with pytest.raises(ConfigError, match="scheme 'mysql'") as refused:
        parse_federation(data)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    "url", ["", "sqlite:///x.db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"]
)
def test_usable_database_urls_load(url: str) -> None:
    data = default_data()
    data["regions"]["eu"]["db"] = url
    assert parse_federation(data).region("eu").db == url


def test_the_highest_port_that_fits_loads() -> None:
    data = default_data()
    data["regions"]["eu"]["port"] = 65519
    eu = parse_federation(data).region("eu")
    assert eu.last_port == 65535 == eu.node_runtime_port(len(eu.nodes) - 1)


def test_a_port_range_past_65535_is_refused() -> None:
    """600 nodes at port 65000 would need ports up to 65609."""
    data = default_data()
    data["regions"]["eu"].update(port=65000, nodes=["phone"] * 600)
    with pytest.raises(
        ConfigError, match=r"\[regions.eu\]: port must be in 1024..64926 .*got 65000"
    ):
        parse_federation(data)
    data["regions"]["eu"]["port"] = 64926
    assert parse_federation(data).region("eu").last_port == 65535


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_bytes(DEFAULT_FEDERATION_TOML.replace('"demo"', '"d\xe9mo"').encode("latin-1"))
    with pytest.raises(ConfigError, match=r"federation.toml: not UTF-8 text \(byte \d+\)"):
        load_federation(path)
    result = RUNNER.invoke(cli.app, ["up", "--home", str(tmp_path / "h"), "--config", str(path)])
    assert result.exit_code == 1 and "not UTF-8 text" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rounds", "0"], "command line [regions.eu]: rounds must be >= 1, got 0"),
        (["--f", "-2"], "command line [regions.eu]: f must be >= 0, got -2"),
        (
            ["--engine", "simulation", "--clients-per-round", "50"],
            "clients-per-round must be <= the 7 simulated device(s)",
        ),
        (["--min-clients", "0"], "min-clients must be >= 1, got 0"),
        (
            ["--engine", "simulation", "--num-supernodes", "2"],
            "clients-per-round must be <= the 2 simulated device(s) (--num-supernodes; "
            "default: the region's nodes), got 7",
        ),
    ],
)
def test_command_line_overrides_pass_the_same_checks(
    tmp_path: Path, options: list[str], message: str
) -> None:
    args = ["region", "run", "--region", "eu", "--home", str(tmp_path), *options]
    result = RUNNER.invoke(cli.app, args)
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "regions").exists()  # refused before anything started


def test_the_demos_rounds_pass_the_same_check(tmp_path: Path) -> None:
    result = RUNNER.invoke(cli.app, ["demo", "--home", str(tmp_path / "demo"), "--rounds", "0"])
    assert result.exit_code == 1 and "command line [regions.eu]: rounds must be >= 1, got 0" in (
        result.output
    )
    assert "Traceback" not in result.output and not (tmp_path / "demo").exists()


def test_a_simulation_samples_at_most_its_devices_a_deployment_also_joined_ones() -> None:
    """A region's nodes must give clients-per-round unless devices also join over the network
    (``joined-devices = true``, ``fedgate client join``; see tests/test_integration_region.py);
    a simulation is bounded by its virtual devices."""
    data = default_data()
    data["regions"]["eu"]["clients-per-round"] = 10
    with pytest.raises(ConfigError, match=r"7 node\(s\) can never give clients-per-round=10"):
        parse_federation(data)
    data["regions"]["eu"]["joined-devices"] = True
    eu = parse_federation(data).region("eu")
    validate_region(eu, "command line", node_count=12)
    with pytest.raises(ConfigError, match="clients-per-round must be <= the 7 simulated"):
        validate_region(eu, "command line", node_count=len(eu.nodes))
    data["regions"]["eu"].update(nodes=[], attacks={}, revoked=[])
    joined_only = parse_federation(data).region("eu")
    data["regions"]["eu"]["joined-devices"] = False
    with pytest.raises(ConfigError, match="nodes is empty, so no round can start"):
        parse_federation(data)
    with pytest.raises(ConfigError, match="must be <= the 0 simulated device"):
        validate_region(joined_only, "command line", node_count=0)


def test_config_error_is_a_usage_error_and_a_value_error() -> None:
    assert issubclass(ConfigError, UsageError) and issubclass(ConfigError, ValueError)
    assert ConfigError("x").exit_code == 1


# -- the run spec --------------------------------------------------------------------------------


def test_region_defaults_are_the_run_specs() -> None:
    region, spec = RegionConfig("eu"), RunSpec(home="/h", region="eu")
    shared = set(RegionConfig.__dataclass_fields__) & set(RunSpec.__dataclass_fields__)
    assert shared >= {"rounds", "lr", "round_timeout", "max_examples", "f", "model", "db"}
    assert {k: getattr(region, k) for k in shared} == {k: getattr(spec, k) for k in shared}
    assert spec.regions == ("eu",) and spec.first_round == 1 and spec.launched_by == "unknown"


def test_the_launchers_run_config_is_the_spec_and_reads_back(tmp_path: Path) -> None:
    fed = default_federation()
    for region in fed.regions:
        config = run_config(fed, region, tmp_path, tmp_path / "out")
        assert tuple(config) == RUN_CONFIG_KEYS
        assert all(isinstance(v, int | float | str) for v in config.values())
        spec = RunSpec.from_run_config(config)
        assert spec == run_spec(fed, region, tmp_path, tmp_path / "out")
        assert spec.to_run_config() == config
        assert spec.regions == ("eu", "us") and spec.region == region.name


specs = st.builds(
    RunSpec,
    home=st.just("/h"),
    region=st.sampled_from(["eu", "us"]),
    regions=st.just(("eu", "us")),
    rounds=st.integers(1, 10**6),
    min_clients=st.integers(1, 5),
    clients_per_round=st.integers(5, 50),
    f=st.integers(0, 9),
    lr=st.floats(1e-6, 10.0),
    alpha=st.floats(1e-3, 1e3),
    seed=st.integers(0, MAX_SEED),
    max_examples=st.integers(1, 10**6),
    round_timeout=st.floats(0.01, 1e6),
    first_round=st.integers(1, 100),
    db=st.sampled_from(["", "sqlite:///r.db", "postgresql://u@h/d"]),
)


@settings(max_examples=40, deadline=None)
@given(specs)
def test_a_valid_spec_survives_the_run_config(spec: RunSpec) -> None:
    spec.check()
    assert RunSpec.from_run_config(spec.to_run_config()) == spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"region": None}, "run config: region is required"),
        ({"home": None}, "run config: home is required"),
        ({"lr": "fast"}, "run config: lr must be float, got 'fast'"),
        ({"rounds": 2.5}, "run config: rounds must be int, got 2.5"),
        ({"rounds": True}, "run config: rounds must be int, got True"),
        ({"lr": NAN}, "run config: lr must be a finite number > 0, got nan"),
        ({"first-round": 0}, "run config: first-round must be >= 1, got 0"),
        ({"regions": "us,apac"}, "run config: regions ['us', 'apac'] must include 'eu'"),
        ({"region": "e u"}, "region must be a simple identifier like 'eu', got 'e u'"),
    ],
)
def test_a_bad_run_config_is_refused_before_the_run(changes: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = RunSpec(home="/h", region="eu").to_run_config()
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    with pytest.raises(ConfigError) as refused:
        RunSpec.from_run_config(config)
    assert message in str(refused.value)


def test_run_config_values_given_as_strings_are_typed() -> None:
    spec = RunSpec.from_run_config(
        {"home": "/h", "region": "eu", "rounds": "3", "lr": "0.05", "seed": 7.0}
    )
    assert (spec.rounds, spec.lr, spec.seed) == (3, 0.05, 7)
    assert math.isclose(spec.round_timeout, 120.0) and spec.regions == ("eu",)


# -- the ServerApp's pure parts ------------------------------------------------------------------


def test_devices_get_the_keys_they_read_from_the_spec() -> None:
    from fedgate.server.region.app import device_config

    spec = RunSpec(home="/h", region="us", regions=("eu", "us"), lr=0.05, seed=3, f=2)
    assert device_config(spec) == {
        "regions": "eu,us", "model": spec.model, "lr": 0.05, "alpha": 0.5, "seed": 3, "f": 2,
        "clients-per-round": 4,
    }  # fmt: skip


def test_the_run_summary_counts_devices_updates_and_reasons() -> None:
    from fedgate.server.region.app import run_summary
    from fedgate.strategies.fates import ClientFate
    from fedgate.strategies.robust_strategy import RoundRecord

    rounds = [
        RoundRecord(1, 3, [ClientFate(1, True), ClientFate(2, False, "bad-signature"),
                           ClientFate(3, False, "replay")]),
        RoundRecord(2, 2, [ClientFate(1, True), ClientFate(2, False, "bad-signature")]),
    ]  # fmt: skip
    spec = RunSpec(home="/h", region="eu", rounds=2, first_round=1, init_model="ab" * 32)
    summary = run_summary(spec, "r7", rounds, {"val-acc": 0.75}, "cd" * 32, 1.5)
    assert summary == {
        "region": "eu", "run_id": "r7", "rounds": 2, "devices": 3, "accepted": 2, "rejected": 3,
        "rejected_by_reason": {"bad-signature": 2, "replay": 1}, "val_acc": 0.75,
        "test_acc": summary["test_acc"], "model_sha256": "cd" * 32, "first_round": 1,
        "init_model": "ab" * 32, "resumed_from": "", "seconds": 1.5,
    }  # fmt: skip
    assert math.isnan(summary["test_acc"])
