"""Plain Flower doing a fedgate region's work: the baseline of ``benchmarks/scale.py``.

``plain_client_app``: Flower's ClientApp doing exactly the local work of fedgate's device
(``fedgate.clients.app.local_round``: the same rating of the received model on the local
test split, the same ``train_local`` with the device profile's budget) on the same data
(``data-dir``); no instruction check, no envelope. ``plain_server_app``: Flower's ``FedAvg``
(every node sampled every round, no separate evaluate exchange: the devices rate the model
inside training, as fedgate's do) with the same central evaluation after every round
(``RegionModel.metrics``) and a timestamp per round in ``rounds.jsonl``, the events
``scale.py`` measures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

ROUNDS_FILE = "rounds.jsonl"


def plain_client_app(data_root: Path | None):
    """Flower's ClientApp with fedgate's device work minus verification and signing; virtual
    client ``i`` reads its data from ``data_root/<i>`` (as in ``scale.py``'s fedgate cases);
    without ``data_root`` (the deployment engine) the node's Dirichlet shard of the region's
    pool (``partition-id`` / ``num-partitions``), as fedgate's deployed devices."""
    from flwr.app import Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from fedgate.clients.app import local_data, local_round, resolve_setup

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = dict(msg.content["config"])
        node = dict(context.node_config)
        pid = int(node["partition-id"])
        node.setdefault("profile", "phone" if pid % 2 == 0 else "pi")
        if data_root is not None:
            node["data-dir"] = str(Path(data_root) / str(pid))
        setup = resolve_setup(node, cfg)
        train_data, test_data = local_data(setup)
        seed = setup.seed + 1000 * int(cfg["server-round"]) + pid
        arrays, metrics = local_round(
            msg.content["arrays"], cfg, setup, train_data, test_data, seed
        )
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    return client_app


def run_fedavg(grid, config: dict[str, Any], clients: int, out_dir: Path) -> None:
    """Flower's ``FedAvg`` over ``clients`` nodes for the region run ``config`` describes
    (its model, rounds, seed, learning rate), a timestamp per round in ``rounds.jsonl``."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp.strategy import FedAvg

    from fedgate.server.db import BlobStore
    from fedgate.server.region.app import RegionModel, device_config
    from fedgate.server.region.run_spec import RunSpec

    spec = RunSpec.from_run_config(config)
    rounds_file = Path(out_dir) / ROUNDS_FILE
    judged = RegionModel.for_spec(spec, BlobStore(Path(out_dir) / "blobs"))
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=clients,
        min_evaluate_nodes=0,
        min_available_nodes=clients,
    )

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = judged.metrics(arrays)
        with rounds_file.open("a") as fh:
            fh.write(json.dumps({"round": server_round, "ts": time.time(), **metrics}) + "\n")
        return MetricRecord(metrics)

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(judged.model.state_dict()),
        num_rounds=spec.rounds,
        timeout=spec.round_timeout,
        train_config=ConfigRecord(device_config(spec)),
        evaluate_fn=central_eval,
    )


def plain_server_app(config: dict[str, Any], clients: int, out_dir: Path):
    """Flower's ServerApp running ``run_fedavg``."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_fedavg(grid, config, clients, out_dir)

    return server_app


def deployed_server_app():
    """``plain_server_app`` for the deployment engine: the run config names the JSON file
    of the region run (``plain-config``, its directory is the output) and ``clients``."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        path = Path(str(context.run_config["plain-config"]))
        clients = int(context.run_config["clients"])
        run_fedavg(grid, json.loads(path.read_text()), clients, path.parent)

    return server_app


def simulate_plain(config: dict[str, Any], clients: int, out_dir: Path, data_root: Path) -> int:
    """Child process: plain Flower's simulation of the run, with fedgate's engine settings
    (``fedgate.server.launch.simulation.simulate``: one CPU per virtual client)."""
    import os

    from flwr.simulation import run_simulation

    run_simulation(
        server_app=plain_server_app(config, clients, out_dir),
        client_app=plain_client_app(data_root),
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
        },
    )
    return 0


def read_rounds(out_dir: Path) -> dict[int, float]:
    """Round number -> the time its central evaluation was recorded (round 0: the start)."""
    path = Path(out_dir) / ROUNDS_FILE
    if not path.exists():
        return {}
    return {int(e["round"]): float(e["ts"]) for e in map(json.loads, path.read_text().splitlines())}
