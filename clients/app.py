"""The fedgate ClientApp: local training on a phone or Pi profile (Flower Message API).

Per SuperNode settings come from ``--node-config`` (kebab-case keys):

- ``profile``: ``phone`` or ``pi`` (default: alternating by partition id)
- ``partition-id`` / ``num-partitions``: which Dirichlet shard of the region's digits pool
- ``region``: the device's compliance region (default: the one the server names)
- ``data-dir``: a directory of ``.npz`` files (``x``, ``y``) to use instead of the digits shard
- ``step-delay``: seconds to sleep per SGD step (emulates slow hardware)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgate.clients.profiles import DeviceProfile, get_profile
from fedgate.models.data import Dataset, DigitsShardLoader, NpzDirectoryLoader
from fedgate.models.nets import build_model
from fedgate.models.train import evaluate, train_local

app = ClientApp()

LOCAL_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DeviceSetup:
    """Everything a device needs to know to train, resolved from node and round config."""

    profile: DeviceProfile
    region: str
    regions: tuple[str, ...]
    partition_id: int
    num_partitions: int
    alpha: float
    seed: int
    data_dir: str = ""


def resolve_setup(node_config: dict, round_config: dict) -> DeviceSetup:
    """Combine the SuperNode's ``--node-config`` with the server's round config."""
    pid = int(node_config.get("partition-id", 0))
    nparts = int(node_config.get("num-partitions", 1))
    regions = (
        tuple(str(round_config.get("regions", "")).split(","))
        if round_config.get("regions")
        else (str(round_config.get("region", "default")),)
    )
    region = str(node_config.get("region", round_config.get("region", regions[0])))
    if region != round_config.get("region", region):
        raise ValueError(
            f"this device belongs to region {region!r} but was asked to train for "
            f"{round_config.get('region')!r}"
        )
    default_profile = "phone" if pid % 2 == 0 else "pi"
    delay = node_config.get("step-delay")
    return DeviceSetup(
        profile=get_profile(
            str(node_config.get("profile", default_profile)),
            None if delay is None else float(delay),
        ),
        region=region,
        regions=regions,
        partition_id=pid,
        num_partitions=nparts,
        alpha=float(round_config.get("alpha", 0.5)),
        seed=int(round_config.get("seed", 0)),
        data_dir=str(node_config.get("data-dir", "")),
    )


@lru_cache(maxsize=8)
def local_data(setup: DeviceSetup) -> tuple[Dataset, Dataset]:
    """The device's (train, local test) split; cached for long-lived ClientApp processes."""
    if setup.data_dir:
        data = NpzDirectoryLoader(Path(setup.data_dir)).load()
    else:
        data = DigitsShardLoader(
            setup.region,
            setup.regions,
            setup.partition_id,
            setup.num_partitions,
            setup.alpha,
            setup.seed,
        ).load()
    rng = np.random.default_rng(setup.seed + 7919 * setup.partition_id)
    perm = rng.permutation(len(data))
    k = max(1, int(len(data) * LOCAL_TEST_FRACTION)) if len(data) > 1 else 0
    test = data.take(perm[:k]) if k else data
    return data.take(perm[k:]), test


def _model_from(msg: Message, model_id: str):
    model = build_model(model_id, seed=None)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on the local shard and send back the new weights."""
    cfg = dict(msg.content["config"])
    setup = resolve_setup(dict(context.node_config), cfg)
    train_data, _ = local_data(setup)
    model = _model_from(msg, str(cfg["model"]))
    stats = train_local(
        model,
        train_data,
        epochs=setup.profile.epochs,
        batch_size=setup.profile.batch_size,
        lr=float(cfg.get("lr", 0.1)),
        max_examples=setup.profile.max_examples,
        step_delay=setup.profile.step_delay,
        seed=setup.seed + 1000 * int(cfg.get("server-round", 0)) + setup.partition_id,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train-loss": stats.loss, "num-examples": stats.num_examples}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the device's local test split."""
    cfg = dict(msg.content["config"])
    setup = resolve_setup(dict(context.node_config), cfg)
    _, test_data = local_data(setup)
    stats = evaluate(_model_from(msg, str(cfg["model"])), test_data)
    metrics = MetricRecord(
        {"eval-loss": stats.loss, "eval-acc": stats.accuracy, "num-examples": stats.num_examples}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
