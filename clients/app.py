"""The fedgate ClientApp: verified instructions in, signed updates out (Flower Message API).

Every message's instruction is checked against the region server's key (the device's trust
anchor) before anything runs; every trained update leaves with an envelope signed by the
device key (``fedgate.strategies.envelope``). A training reply also rates the global model
it started from on the device's local test split (``eval-loss``, ``eval-acc``,
``eval-examples``): that is the federated evaluation of the previous round's model, so only
the last model needs an evaluate message. Per SuperNode settings come from
``--node-config`` (kebab-case keys):

- ``device-dir``: the enrolled device directory (key, enrollment, trust anchor); required
- ``profile``: ``phone`` or ``pi`` (default: alternating by partition id)
- ``partition-id`` / ``num-partitions``: which Dirichlet shard of the region's digits pool
- ``region``: the device's compliance region (default: the one its enrollment names)
- ``data-dir``: a directory of ``.npz`` files (``x``, ``y``) to use instead of the digits shard
- ``step-delay``: seconds to sleep per SGD step (emulates slow hardware)
- ``attack``: a simulated attack profile (``fedgate.clients.sim.misbehaviour.known_profiles``)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgate.clients.device import Device, load_device
from fedgate.clients.device_view import emit, listening
from fedgate.clients.profiles import DeviceProfile, get_profile
from fedgate.models.data import Dataset, DigitsShardLoader, NpzDirectoryLoader
from fedgate.models.defaults import DEFAULT_ALPHA, DEFAULT_LR, DEFAULT_SEED
from fedgate.models.nets import build_model
from fedgate.models.train import evaluate, train_local
from fedgate.strategies.envelope import arrayrecord_digest, sign_update
from fedgate.strategies.instruction import Instruction, verify_instruction

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
        alpha=float(round_config.get("alpha", DEFAULT_ALPHA)),
        seed=int(round_config.get("seed", DEFAULT_SEED)),
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


def _instruction(msg: Message, context: Context, kind: str) -> tuple[Device, Instruction]:
    """This node's device and the server's verified instruction; raises on any doubt."""
    device = load_device(dict(context.node_config))
    instruction = verify_instruction(
        dict(msg.content["config"]),
        kind=kind,
        model_digest=arrayrecord_digest(msg.content["arrays"]),
        anchor=device.anchor,
        region=device.region,
    )
    return device, instruction


def _model_from(arrays: ArrayRecord, model_id: str):
    model = build_model(model_id, seed=None)
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def sign_reply(
    device: Device,
    instruction: Instruction,
    *,
    base: ArrayRecord,
    arrays: ArrayRecord,
    metrics: dict[str, int | float],
) -> ConfigRecord:
    """The envelope an honest device attaches to its reply: the update, bound to this round's
    facts and the model it started from, signed with the device's enrolled key. ``base`` is
    the model the instruction came with: its digest is the one the device computed over it
    to verify the instruction (``instruction.model_digest``), not computed a second time."""
    return sign_update(
        device.key,
        base=base,
        base_digest=instruction.model_digest,
        arrays=arrays,
        metrics=metrics,
        region=device.region,
        run_id=instruction.run_id,
        server_round=instruction.server_round,
        nonce=instruction.nonce,
    )


def local_round(
    base: ArrayRecord,
    cfg: dict,
    setup: DeviceSetup,
    train_data: Dataset,
    test_data: Dataset,
    seed: int,
) -> tuple[ArrayRecord, dict[str, int | float]]:
    """A device's local work in one round: rate the received global model ``base`` on the
    local test split, then train it on the local data with the profile's budget; returns the
    trained weights and the reply's metrics."""
    model = _model_from(base, str(cfg["model"]))
    rated = evaluate(model, test_data)  # the received global model, before local training
    stats = train_local(
        model,
        train_data,
        epochs=setup.profile.epochs,
        batch_size=setup.profile.batch_size,
        lr=float(cfg.get("lr", DEFAULT_LR)),
        max_examples=setup.profile.max_examples,
        step_delay=setup.profile.step_delay,
        seed=seed,
    )
    metrics: dict[str, int | float] = {
        "train-loss": stats.loss,
        "num-examples": stats.num_examples,
        "eval-loss": rated.loss,
        "eval-acc": rated.accuracy,
        "eval-examples": rated.num_examples,
    }
    return ArrayRecord(model.state_dict()), metrics


def _misbehaviour(attack: str):
    """The simulated misbehaviour a node was given, or None for an honest device."""
    if not attack:
        return None
    # function-level on purpose: only demo, test and benchmark nodes given an ``attack`` load
    # the simulation package; a device's normal path never imports it
    from fedgate.clients.sim.wrap import Misbehaviour

    return Misbehaviour(attack)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Verify the instruction, train on the local shard, sign and send the new weights."""
    device, instruction = _instruction(msg, context, "train")
    cfg = instruction.config
    setup = resolve_setup(dict(context.node_config), cfg)
    sim = _misbehaviour(str(context.node_config.get("attack", "") or ""))
    seed = setup.seed + 1000 * instruction.server_round + setup.partition_id
    train_data, test_data = local_data(setup)
    if sim is not None:
        train_data = sim.train_data(train_data, seed)
    base = msg.content["arrays"]
    arrays, metrics = local_round(base, cfg, setup, train_data, test_data, seed)
    emit(
        "round", run=instruction.run_id, round=instruction.server_round,
        examples=metrics["num-examples"], available=len(train_data),
        cap=setup.profile.max_examples, profile=setup.profile.name, loss=metrics["train-loss"],
    )  # fmt: skip
    if sim is not None:
        arrays = sim.update(base, arrays, cfg, seed)
    reply = dict(base=base, arrays=arrays, metrics=metrics)
    envelope = (
        sign_reply(device, instruction, **reply)
        if sim is None
        else sim.envelope(sign_reply, device, instruction, **reply)
    )
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    if envelope is not None:
        content["envelope"] = envelope
    if envelope is not None and listening():  # the digest is for a device owner's view only
        emit(
            "signed", run=instruction.run_id, round=instruction.server_round,
            digest=arrayrecord_digest(arrays),
        )  # fmt: skip
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Verify the instruction and evaluate the global model on the local test split."""
    _, instruction = _instruction(msg, context, "evaluate")
    setup = resolve_setup(dict(context.node_config), instruction.config)
    _, test_data = local_data(setup)
    stats = evaluate(
        _model_from(msg.content["arrays"], str(instruction.config["model"])), test_data
    )
    metrics = MetricRecord(
        {"eval-loss": stats.loss, "eval-acc": stats.accuracy, "num-examples": stats.num_examples}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
