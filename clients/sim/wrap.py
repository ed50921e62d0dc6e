"""How a simulated node wraps the honest ClientApp (``fedgate.clients.app``).

A node given an ``attack`` in its node config trains through the honest steps; ``Misbehaviour``
changes what it trains on and sends (the attacks of ``fedgate.clients.sim.attacks``) or how it
signs (the signing faults of ``fedgate.clients.sim.misbehaviour``), and otherwise leaves the
honest path, and the honest signing, as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedgate.clients.sim.attacks import apply_attack, poison_dataset
from fedgate.clients.sim.misbehaviour import SIGNING_FAULTS, signed_reply
from fedgate.models.data import Dataset
from fedgate.models.train import flatten, unflatten
from fedgate.strategies.rule_config import REGION_DEFAULT


def poisoned_update(attack: str, base: ArrayRecord, trained: ArrayRecord, cfg: dict, seed: int):
    """The arrays a model-poisoning attacker sends instead of its honest ``trained`` ones."""
    like = [a.numpy() for a in base.values()]
    before = flatten(like)
    delta = flatten([a.numpy() for a in trained.values()]) - before
    rng = np.random.default_rng(seed)
    bad = apply_attack(
        attack,
        delta,
        rng=rng,
        f=int(cfg.get("f", REGION_DEFAULT.f)),
        n=int(cfg.get("clients-per-round", 0)) or None,
    )
    arrays = unflatten(before + bad.astype(np.float32), like)
    return ArrayRecord({k: Array(a) for k, a in zip(base.keys(), arrays, strict=True)})


@dataclass(frozen=True)
class Misbehaviour:
    """A node's simulated ``attack`` wrapped around the honest ClientApp's steps."""

    attack: str

    @property
    def signing_fault(self) -> bool:
        return self.attack in SIGNING_FAULTS

    def train_data(self, data: Dataset, seed: int) -> Dataset:
        """The training set it trains on (a data-poisoning attack changes it)."""
        if self.signing_fault:
            return data
        return poison_dataset(self.attack, data, np.random.default_rng(seed))

    def update(self, base: ArrayRecord, trained: ArrayRecord, cfg: dict, seed: int) -> ArrayRecord:
        """The arrays it sends instead of the honest ``trained`` ones."""
        if self.signing_fault or self.attack == "none":
            return trained
        return poisoned_update(self.attack, base, trained, cfg, seed)

    def envelope(
        self,
        honest: Callable[..., ConfigRecord],
        device: Any,
        instruction: Any,
        *,
        base: ArrayRecord,
        arrays: ArrayRecord,
        metrics: Mapping[str, int | float],
    ) -> ConfigRecord | None:
        """Its envelope: the honest one (``honest``) unless it was given a signing fault."""
        if not self.signing_fault:
            return honest(device, instruction, base=base, arrays=arrays, metrics=metrics)
        return signed_reply(
            self.attack,
            device.key,
            device.device_id,
            region=device.region,
            run_id=instruction.run_id,
            server_round=instruction.server_round,
            nonce=instruction.nonce,
            base=base,
            arrays=arrays,
            metrics=metrics,
        )
