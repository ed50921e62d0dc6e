"""Plain Flower on the deployment engine: the baseline of ``scale.py``'s ``deployment`` rows.

Flower as its documentation runs it, with fedgate's device work (``_plain_flower``): one
``flower-superlink`` (subprocess isolation: it starts the ``flwr-serverapp`` itself; started
through ``fedgate.server.launch.superlink_main`` for the same SQLite busy timeout as fedgate's
SuperLink: with Flower's 5 s, a loaded machine makes it drop replies with "database is
locked", and FedAvg then waits for the round timeout), N
``flower-supernode`` (subprocess isolation: a ``flwr-clientapp`` process per task), no TLS,
no node authentication, no proxy, then ``flwr run`` of a generated app whose ServerApp is
``FedAvg`` and whose ClientApp trains on the node's Dirichlet shard
(``partition-id`` / ``num-partitions``, profile by partition as fedgate's nodes).
Every process is started in ``home`` through ``ProcessTable`` and stopped by the caller
(``ProcessTable(home).stop_all()``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from fedgate.procenv import flower_env, port_open
from fedgate.server.launch.processes import ProcessTable, free_port_block, wait_until
from fedgate.server.launch.topology import SUPERLINK_LAUNCHER, _bin

BENCH_DIR = Path(__file__).resolve().parent

APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "plain-flower"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "bench"

[tool.flwr.app.components]
serverapp = "plain_app:server_app"
clientapp = "plain_app:client_app"

[tool.flwr.app.config]
plain-config = ""
clients = 0
"""

APP_MODULE = f"""import sys

sys.path.insert(0, {str(BENCH_DIR)!r})
from _plain_flower import deployed_server_app, plain_client_app

server_app = deployed_server_app()
client_app = plain_client_app(None)
"""


def write_app(app_dir: Path) -> Path:
    """The Flower app ``flwr run`` submits (``_plain_flower``'s apps)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(APP_PYPROJECT)
    (app_dir / "plain_app.py").write_text(APP_MODULE)
    return app_dir


def start_plain(home: Path, nodes: int, profiles: list[str], timeout: float) -> int:
    """SuperLink and ``nodes`` SuperNodes under ``home``; returns the SuperLink's port."""
    table = ProcessTable(home)
    port = free_port_block(nodes + 1)
    state = home / "superlink"
    state.mkdir(parents=True, exist_ok=True)
    link = table.start(
        "superlink",
        [*SUPERLINK_LAUNCHER, "--insecure", "--database", str(state / "state.db"),
         "--port", str(port), "--disable-runtime-dependency-installation"],
        {"FLWR_HOME": str(state / "flwr-home")},
    )  # fmt: skip
    wait_until(lambda: port_open(port), timeout, "plain SuperLink", link.log, link.pid)
    for i in range(nodes):
        node_dir = home / f"node-{i}"
        node_dir.mkdir(parents=True, exist_ok=True)
        config = f"partition-id={i} num-partitions={nodes} profile='{profiles[i]}'"
        table.start(
            f"supernode-{i}",
            [_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
             "--port", str(port + 1 + i), "--node-config", config],
            {"FLWR_HOME": str(node_dir / "flwr-home")},
        )  # fmt: skip
    return port


def submit_plain_run(home: Path, port: int, config: dict[str, Any], out_dir: Path, nodes: int):
    """``flwr run`` of the plain app for the region run ``config``; returns once submitted."""
    config_path = out_dir / "plain-config.json"
    config_path.write_text(json.dumps(config))
    cli = home / "cli"
    cli.mkdir(parents=True, exist_ok=True)
    (cli / "config.toml").write_text(
        f'[superlink]\ndefault = "plain"\n\n[superlink.plain]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    run_config = out_dir / "plain-run-config.toml"
    run_config.write_text(f"plain-config = {json.dumps(str(config_path))}\nclients = {nodes}\n")
    app = write_app(home / "app")
    with (out_dir / "flwr-run.log").open("ab") as log:
        subprocess.run(
            [_bin("flwr"), "run", str(app), "plain", "--run-config", str(run_config)],
            stdout=log, stderr=subprocess.STDOUT, env=flower_env({"FLWR_HOME": str(cli)}),
            check=True, timeout=300,
        )  # fmt: skip
