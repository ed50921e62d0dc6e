"""In-process federated simulation for the robustness benchmark and the attack tests.

Many federated runs advance in lock-step: one *group* shares the data, the Byzantine clients,
the attack and the seeds, and holds one run per aggregation rule (fedgate's or Flower's). Each
round, every client of every run trains with :class:`BatchedTrainer`, which performs exactly
the algorithm of :func:`fedgate.models.train.train_local` (the ClientApp's training code) for
all (run, client) pairs at once: the same first-``max_examples`` cap, the same
``torch.randperm`` batch order from ``torch.Generator().manual_seed(seed)`` per epoch, mean
cross-entropy per mini-batch, and ``torch.optim.SGD(lr, momentum)`` with a fresh momentum
buffer each round (``buf = momentum * buf + grad``, ``p -= lr * buf``; the first step's
``buf = grad`` is the same thing). Only the float summation order differs;
``tests/test_attacks_sim.py`` checks it against ``train_local`` to 1e-5. The per-client seed is
the ClientApp's: ``seed + 1000 * round + partition_id``.

Byzantine clients compute their benign delta on their (possibly poisoned, see
:mod:`fedgate.clients.attacks`) data, then replace it by the attack's crafted delta; colluding
attackers see the round's honest deltas. Optional *client momentum* (Karimireddy et al.,
ICML 2021, "Learning from history"): each client sends ``m_t = beta m_{t-1} + (1 - beta)
delta_t`` instead of ``delta_t``.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedgate.clients.attacks import Attack, backdoor_success_rate, get_attack
from fedgate.models.data import (
    TEST_FRACTION,
    Dataset,
    _stratified_split,
    dirichlet_partition,
    load_digits_dataset,
)
from fedgate.models.nets import build_model, get_weights
from fedgate.models.train import flatten

MODEL_ID = "mlp-64-32-10"
HIDDEN, FEATURES, CLASSES = 32, 64, 10
SHAPES = ((HIDDEN, FEATURES), (HIDDEN,), (CLASSES, HIDDEN), (CLASSES,))
DIM = sum(math.prod(s) for s in SHAPES)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Setting:
    """Data, clients and local training of one benchmark cell."""

    alpha: float = 0.5
    f: int = 4
    n: int = 20
    rounds: int = 100
    seed: int = 0
    epochs: int = 1  # the "pi" device profile: 1 epoch, batch 32, at most 200 examples
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    max_examples: int = 200
    client_momentum: float = 0.0
    colluding: bool = True


@dataclass
class Federation:
    """Shards, Byzantine ids and the test set for one (alpha, f, n, seed, attack)."""

    train: list[Dataset]
    test: Dataset
    byzantine: np.ndarray  # sorted client indices
    attack: Attack

    @property
    def honest(self) -> np.ndarray:
        mask = np.ones(len(self.train), dtype=bool)
        mask[self.byzantine] = False
        return np.flatnonzero(mask)


def make_federation(setting: Setting, attack: str | Attack = "none") -> Federation:
    data = load_digits_dataset()
    test_idx, pool_idx = _stratified_split(
        data.y, TEST_FRACTION, np.random.default_rng(setting.seed)
    )
    test, pool = data.take(test_idx), data.take(pool_idx)
    parts = dirichlet_partition(pool.y, setting.n, setting.alpha, seed=setting.seed)
    atk = get_attack(attack) if isinstance(attack, str) else attack
    # Nested Byzantine sets: the first f of one seeded permutation (f=4 within f=6).
    order = np.random.default_rng(setting.seed + 17).permutation(setting.n)
    byz = np.sort(order[: setting.f]) if atk.name != "none" else np.array([], dtype=int)
    train = []
    for i, idx in enumerate(parts):
        shard = pool.take(idx)
        if i in set(byz.tolist()):
            shard = atk.poison_data(shard, np.random.default_rng([setting.seed, 101, i]))
        train.append(shard)
    return Federation(train, test, byz, atk)


# ----------------------------------------------------------------------------- training


class BatchedTrainer:
    """``train_local`` for R runs x C clients at once (manual gradients, one torch graph-free
    pass per mini-batch step)."""

    def __init__(self, shards: Sequence[Dataset], setting: Setting) -> None:
        self.s = setting
        self.sizes = [min(len(d), setting.max_examples) for d in shards]
        c, nmax = len(shards), max(self.sizes)
        self.x = torch.zeros(c, nmax, FEATURES)
        self.y = torch.zeros(c, nmax, dtype=torch.long)
        for i, d in enumerate(shards):
            k = self.sizes[i]
            self.x[i, :k] = torch.from_numpy(d.x[:k])
            self.y[i, :k] = torch.from_numpy(d.y[:k])

    def schedule(self, server_round: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per step: example indices (S, C, B) and validity mask (S, C, B) for every client."""
        s, b = self.s, self.s.batch_size
        per_client = []
        for i, n in enumerate(self.sizes):
            gen = torch.Generator().manual_seed(s.seed + 1000 * server_round + i)
            steps = []
            for _ in range(s.epochs):
                perm = torch.randperm(n, generator=gen)
                steps.extend(perm[start : start + b] for start in range(0, n, b))
            per_client.append(steps)
        # Align every client's e-th epoch: steps per epoch differ, inactive slots are masked.
        spe = [math.ceil(n / b) for n in self.sizes]
        smax = max(spe)
        idx = torch.zeros(s.epochs * smax, len(self.sizes), b, dtype=torch.long)
        mask = torch.zeros(s.epochs * smax, len(self.sizes), b)
        for i, steps in enumerate(per_client):
            for k, batch in enumerate(steps):
                e, j = divmod(k, spe[i])
                idx[e * smax + j, i, : len(batch)] = batch
                mask[e * smax + j, i, : len(batch)] = 1.0
        return idx, mask

    def train(self, weights: torch.Tensor, server_round: int) -> torch.Tensor:
        """New local weights (R, C, DIM) from global weights (R, DIM)."""
        r, c = weights.shape[0], len(self.sizes)
        params = [
            p.reshape(r, 1, *shape).expand(r, c, *shape).clone()
            for p, shape in zip(
                torch.split(weights, [math.prod(s) for s in SHAPES], 1), SHAPES, strict=False
            )
        ]
        w1, b1, w2, b2 = params
        bufs = [torch.zeros_like(p) for p in params]
        idx, mask = self.schedule(server_round)
        lr, mom = self.s.lr, self.s.momentum
        rows = torch.arange(c)[:, None]
        for step in range(idx.shape[0]):
            m = mask[step]  # (C, B)
            cnt = m.sum(1)
            active = (cnt > 0).float()
            if not bool(active.any()):
                continue
            xb = self.x[rows, idx[step]]  # (C, B, F)
            yb = self.y[rows, idx[step]]
            hp = torch.matmul(xb, w1.transpose(-1, -2)) + b1.unsqueeze(-2)  # (R, C, B, H)
            h = torch.relu(hp)
            logits = torch.matmul(h, w2.transpose(-1, -2)) + b2.unsqueeze(-2)
            g = torch.softmax(logits, -1)
            g = g - torch.nn.functional.one_hot(yb, CLASSES).to(g.dtype)
            g = g * (m / cnt.clamp(min=1.0)[:, None]).unsqueeze(-1)
            gw2 = torch.matmul(g.transpose(-1, -2), h)
            gb2 = g.sum(-2)
            dh = torch.matmul(g, w2) * (hp > 0)
            gw1 = torch.matmul(dh.transpose(-1, -2), xb)
            gb1 = dh.sum(-2)
            for p, buf, grad in zip(params, bufs, (gw1, gb1, gw2, gb2), strict=True):
                a = active.reshape(1, c, *([1] * (grad.dim() - 2)))
                buf.mul_(1 - a * (1 - mom)).add_(grad * a)
                p.sub_(lr * a * buf)
        return torch.cat([p.reshape(r, c, -1) for p in params], -1)

    @property
    def num_examples(self) -> np.ndarray:
        return np.asarray(self.sizes, dtype=np.float64)


def batched_predict(weights: torch.Tensor, x: np.ndarray) -> torch.Tensor:
    """Predicted labels (R, k) of R flat MLP weight vectors on ``x``."""
    w1, b1, w2, b2 = (
        p.reshape(-1, *s)
        for p, s in zip(
            torch.split(weights, [math.prod(s) for s in SHAPES], 1), SHAPES, strict=False
        )
    )
    xt = torch.from_numpy(x)
    h = torch.relu(torch.matmul(xt, w1.transpose(-1, -2)) + b1.unsqueeze(-2))
    return (torch.matmul(h, w2.transpose(-1, -2)) + b2.unsqueeze(-2)).argmax(-1)


# ----------------------------------------------------------------------------- rules

# An aggregation step: (deltas (n, d) float32, global weights (d,), example counts (n,))
# -> new global weights (d,).
Step = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class RuleSpec:
    """One run in a group: a label, its implementation and a factory for its step."""

    rule: str
    impl: str  # "fedgate" | "flower"
    make: Callable[[Setting], Step]
    min_n: Callable[[int], int] = lambda f: 1


def fedgate_step(name: str, pre: str | None = None, **params) -> Callable[[Setting], Step]:
    def make(setting: Setting) -> Step:
        from fedgate.strategies.aggregators import make_aggregator

        agg = make_aggregator(name, setting.f, pre=pre, **params)
        agg.check(setting.n)

        def step(deltas: np.ndarray, glob: np.ndarray, counts: np.ndarray) -> np.ndarray:
            return glob + np.asarray(agg(deltas, counts).vector, dtype=np.float32)

        return step

    return make


def flower_step(kind: str) -> Callable[[Setting], Step]:
    """Flower 1.41's own strategy ``aggregate_train`` on reply Messages holding full weights."""

    def make(setting: Setting) -> Step:
        from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict
        from flwr.serverapp.strategy import (
            Bulyan,
            FedAvg,
            FedMedian,
            FedTrimmedAvg,
            Krum,
            MultiKrum,
        )

        logging.getLogger("flwr").setLevel(logging.WARNING)
        f, n = setting.f, setting.n
        strategy = {
            "fedavg": lambda: FedAvg(),
            "krum": lambda: Krum(num_malicious_nodes=f),
            "multikrum": lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f),
            "bulyan": lambda: Bulyan(num_malicious_nodes=f),
            "fedmedian": lambda: FedMedian(),
            "fedtrimmedavg": lambda: FedTrimmedAvg(beta=(f + 0.5) / n),
        }[kind]()

        def step(deltas: np.ndarray, glob: np.ndarray, counts: np.ndarray) -> np.ndarray:
            replies = []
            for i, (delta, cnt) in enumerate(zip(deltas, counts, strict=True)):
                flat = glob + delta
                arrays, pos = [], 0
                for shape in SHAPES:
                    size = math.prod(shape)
                    arrays.append(flat[pos : pos + size].reshape(shape).copy())
                    pos += size
                meta = Metadata(
                    run_id=1,
                    message_id=f"reply-{i}",
                    src_node_id=i + 1,
                    dst_node_id=0,
                    reply_to_message_id=f"ins-{i}",
                    group_id="1",
                    created_at=time.time(),
                    ttl=3600.0,
                    message_type="train",
                )
                content = RecordDict(
                    {
                        "arrays": ArrayRecord(arrays),
                        "metrics": MetricRecord({"num-examples": int(cnt)}),
                    }
                )
                replies.append(Message(content, metadata=meta))
            arrays, _ = strategy.aggregate_train(1, replies)
            if arrays is None:  # Flower skipped the round (e.g. Bulyan with n < 4f + 3)
                return glob
            return flatten(arrays.to_numpy_ndarrays())

        return step

    return make


FLOWER_RULES: dict[str, RuleSpec] = {
    "fedavg": RuleSpec("fedavg", "flower", flower_step("fedavg")),
    "krum": RuleSpec("krum", "flower", flower_step("krum")),
    "multikrum": RuleSpec("multikrum", "flower", flower_step("multikrum")),
    "bulyan": RuleSpec("bulyan", "flower", flower_step("bulyan"), lambda f: 4 * f + 3),
    "fedmedian": RuleSpec("fedmedian", "flower", flower_step("fedmedian")),
    "fedtrimmedavg": RuleSpec("fedtrimmedavg", "flower", flower_step("fedtrimmedavg")),
}


# ----------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    rule: str
    impl: str
    accuracy: float
    backdoor_asr: float | None = None
    diverged: bool = False
    error: str = ""
    curve: list[float] = field(default_factory=list)


def initial_weights(seed: int) -> np.ndarray:
    return flatten(get_weights(build_model(MODEL_ID, seed=seed)))


def run_group(
    setting: Setting,
    attack: str,
    specs: Sequence[RuleSpec],
    eval_every: int = 0,
) -> list[RunResult]:
    """All ``specs`` on one (setting, attack), in lock-step; one result per spec."""
    torch.set_num_threads(1)
    fed = make_federation(setting, attack)
    trainer = BatchedTrainer(fed.train, setting)
    counts = trainer.num_examples
    steps: list[Step | None] = []
    errors: list[str] = []
    for spec in specs:
        try:
            steps.append(spec.make(setting))
            errors.append("")
        except Exception as exc:
            steps.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    live = [i for i, s in enumerate(steps) if s is not None]
    # Flower's ``ArrayRecord.to_numpy_ndarrays(keep_input=False)`` (Bulyan) forces a full
    # ``gc.collect()`` per record; with torch/scipy loaded that is ~0.2 s each. Freezing the
    # long-lived objects keeps those collections cheap without changing any result.
    gc.collect()
    gc.freeze()
    results = [
        RunResult(spec.rule, spec.impl, math.nan, error=e)
        for spec, e in zip(specs, errors, strict=False)
    ]
    if not live:
        return results
    glob = np.repeat(initial_weights(setting.seed)[None, :], len(live), axis=0)
    mom = np.zeros((len(live), setting.n, DIM), dtype=np.float32)
    byz, honest = fed.byzantine, fed.honest
    beta = setting.client_momentum
    for rnd in range(1, setting.rounds + 1):
        local = trainer.train(torch.from_numpy(glob), rnd).numpy()
        deltas = local - glob[:, None, :]
        if beta > 0:
            mom = beta * mom + (1 - beta) * deltas if rnd > 1 else deltas.copy()
            sent = mom.copy()
        else:
            sent = deltas
        rng = np.random.default_rng([setting.seed, 7, rnd])
        for k, i in enumerate(live):
            if len(byz):
                ref = sent[k, honest] if setting.colluding else None
                mal = fed.attack.craft(sent[k, byz], ref, setting.f, rng, n=setting.n)
                upd = sent[k].copy()
                upd[byz] = mal
            else:
                upd = sent[k]
            if results[i].error:
                continue
            try:
                new = np.asarray(steps[i](upd.astype(np.float32), glob[k], counts), np.float32)
            except Exception as exc:
                results[i].error = f"round {rnd}: {type(exc).__name__}: {exc}"
                continue
            glob[k] = new
        if eval_every and rnd % eval_every == 0:
            acc = _accuracy(glob, fed.test)
            for k, i in enumerate(live):
                results[i].curve.append(float(acc[k]))
    acc = _accuracy(glob, fed.test)
    for k, i in enumerate(live):
        res = results[i]
        if res.error:
            continue
        res.accuracy = float(acc[k])
        res.diverged = bool(not np.all(np.isfinite(glob[k])) or not res.accuracy >= 0.2)
        if fed.attack.name == "backdoor":
            w = torch.from_numpy(glob[k : k + 1])
            res.backdoor_asr = backdoor_success_rate(
                lambda x, w=w: batched_predict(w, x)[0].numpy(), fed.test
            )
    return results


def _accuracy(glob: np.ndarray, test: Dataset) -> np.ndarray:
    safe = np.nan_to_num(glob, nan=0.0, posinf=0.0, neginf=0.0)
    pred = batched_predict(torch.from_numpy(safe), test.x).numpy()
    acc = (pred == test.y[None, :]).mean(1)
    acc[~np.all(np.isfinite(glob), axis=1)] = 0.0
    return acc
