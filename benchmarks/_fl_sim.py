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
``tests/test_attacks_sim.py`` checks it against ``train_local``. The per-client seed is the
ClientApp's: ``seed + 1000 * round + partition_id``. Clients train with the ClientApp's
"phone" profile (``fedgate.clients.profiles``: epochs, batch size, example cap), lr 0.1 and
``train_local``'s SGD momentum 0.9.

Byzantine clients compute their benign delta on their (possibly poisoned, see
:mod:`fedgate.clients.sim.attacks`) data, then replace it by the attack's crafted delta; colluding
attackers see the round's honest deltas. Every run of a group draws the attack's randomness
from the same per-round seed, so all rules face the same first malicious round.
Optional *client momentum* (Karimireddy, He & Jaggi, ICML 2021): each client sends
``m_t = beta m_{t-1} + (1 - beta) delta_t`` (``m_1 = delta_1``) instead of ``delta_t``;
measured, not used by the region default (it did not raise the worst case here).

Data layout, as ``fedgate.models.data`` lays out a region: the common test split (20 %,
stratified) only measures the reported accuracy; the server holds a stratified validation split
of the rest (``VALIDATION_FRACTION``, 15 %): its own data, for FLTrust's reference update (it
trains on it like a client) and the ensemble's scorer; the clients share the remaining pool by
Dirichlet(alpha).
"""

from __future__ import annotations

import copy
import gc
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch

from fedgate.clients.profiles import PROFILES
from fedgate.clients.sim.attacks import BACKDOORS, Attack, backdoor_success_rate, get_attack
from fedgate.models.data import (
    TEST_FRACTION,
    VALIDATION_FRACTION,
    Dataset,
    _stratified_split,
    dirichlet_partition,
    load_digits_dataset,
)
from fedgate.models.nets import build_model, get_weights
from fedgate.models.train import flatten
from fedgate.strategies.aggregators.trigger_scan import ScanProbe

MODEL_ID = "mlp-64-32-10"
HIDDEN, FEATURES, CLASSES = 32, 64, 10
SHAPES = ((HIDDEN, FEATURES), (HIDDEN,), (CLASSES, HIDDEN), (CLASSES,))
DIM = sum(math.prod(s) for s in SHAPES)
PROFILE = PROFILES["phone"]


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Setting:
    """Data, clients and local training of one benchmark cell."""

    alpha: float = 0.5
    f: int = 4
    n: int = 20
    rounds: int = 100
    seed: int = 0
    epochs: int = PROFILE.epochs  # local training: the ClientApp's "phone" profile
    batch_size: int = PROFILE.batch_size
    lr: float = 0.1  # the region config's default lr
    momentum: float = 0.9  # train_local's SGD momentum
    max_examples: int = PROFILE.max_examples
    client_momentum: float = 0.0
    colluding: bool = True


@dataclass
class Federation:
    """Shards, Byzantine ids, the server's root data and the test set of one cell."""

    train: list[Dataset]
    test: Dataset
    root: Dataset  # the server's own held-out data (its region validation split)
    byzantine: np.ndarray  # sorted client indices
    attack: Attack

    @property
    def honest(self) -> np.ndarray:
        mask = np.ones(len(self.train), dtype=bool)
        mask[self.byzantine] = False
        return np.flatnonzero(mask)


def make_federation(setting: Setting, attack: str | Attack = "none") -> Federation:
    """Dirichlet shards of the digits pool, the seeded Byzantine set and their poisoned data."""
    data = load_digits_dataset()
    test_idx, pool_idx = _stratified_split(
        data.y, TEST_FRACTION, np.random.default_rng(setting.seed)
    )
    test, rest = data.take(test_idx), data.take(pool_idx)
    held, pool_idx = _stratified_split(
        rest.y, VALIDATION_FRACTION, np.random.default_rng([setting.seed, 31])
    )
    server, pool = rest.take(held), rest.take(pool_idx)
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
    return Federation(train, test, server, byz, atk)


# ----------------------------------------------------------------------------- training


class BatchedTrainer:
    """``train_local`` for R runs x C clients at once (manual gradients, no autograd).

    Clients are kept sorted by steps per epoch (most first), so at every step the clients
    still training are a prefix: each step only computes on that prefix (no masked work).
    """

    def __init__(self, shards: Sequence[Dataset], setting: Setting) -> None:
        self.s = setting
        self.sizes = [min(len(d), setting.max_examples) for d in shards]
        if min(self.sizes) == 0:
            raise ValueError("every client needs at least one training example")
        b = setting.batch_size
        self.spe = np.array([math.ceil(n / b) for n in self.sizes])
        self.order = np.argsort(-self.spe, kind="stable")  # position -> client
        c, nmax = len(shards), max(self.sizes)
        self.x = torch.zeros(c, nmax, FEATURES)
        self.y = torch.zeros(c, nmax, dtype=torch.long)
        for pos, i in enumerate(self.order):
            k = self.sizes[i]
            self.x[pos, :k] = torch.from_numpy(shards[i].x[:k])
            self.y[pos, :k] = torch.from_numpy(shards[i].y[:k])

    def schedule(self, server_round: int, seeds: Sequence[int] | None = None):
        """Per step: example indices (S, C, B), in-batch mask (S, C, B) and active prefix (S,).

        ``seeds[i]`` is client ``i``'s torch seed (default: the ClientApp's per-round seed).
        """
        s, b = self.s, self.s.batch_size
        c = len(self.sizes)
        if seeds is None:
            seeds = [s.seed + 1000 * server_round + i for i in range(c)]
        smax = int(self.spe.max())
        idx = torch.zeros(s.epochs * smax, c, b, dtype=torch.long)
        mask = torch.zeros(s.epochs * smax, c, b)
        for pos, i in enumerate(self.order):
            n = self.sizes[i]
            gen = torch.Generator().manual_seed(int(seeds[i]))
            for e in range(s.epochs):
                perm = torch.randperm(n, generator=gen)
                for j, start in enumerate(range(0, n, b)):
                    batch = perm[start : start + b]
                    idx[e * smax + j, pos, : len(batch)] = batch
                    mask[e * smax + j, pos, : len(batch)] = 1.0
        spe_sorted = self.spe[self.order]
        active = np.array(
            [int(np.sum(spe_sorted > j)) for _ in range(s.epochs) for j in range(smax)]
        )
        return idx, mask, active

    def train(
        self, weights: torch.Tensor, server_round: int, seeds: Sequence[int] | None = None
    ) -> torch.Tensor:
        """New local weights (R, C, DIM) of every client from global weights (R, DIM)."""
        r, c = weights.shape[0], len(self.sizes)
        params = [
            p.reshape(r, 1, *shape).expand(r, c, *shape).clone()
            for p, shape in zip(
                torch.split(weights, [math.prod(s) for s in SHAPES], 1), SHAPES, strict=True
            )
        ]
        bufs = [torch.zeros_like(p) for p in params]
        idx, mask, active = self.schedule(server_round, seeds)
        lr, mom = self.s.lr, self.s.momentum
        rows = torch.arange(c)[:, None]
        for step in range(idx.shape[0]):
            k = int(active[step])
            w1, b1, w2, b2 = (p[:, :k] for p in params)
            m = mask[step, :k]  # (k, B)
            cnt = m.sum(1)
            xb = self.x[rows[:k], idx[step, :k]]  # (k, B, F)
            yb = self.y[rows[:k], idx[step, :k]]
            hp = torch.matmul(xb, w1.transpose(-1, -2)) + b1.unsqueeze(-2)  # (R, k, B, H)
            h = torch.relu(hp)
            logits = torch.matmul(h, w2.transpose(-1, -2)) + b2.unsqueeze(-2)
            g = torch.softmax(logits, -1)
            g = g - torch.nn.functional.one_hot(yb, CLASSES).to(g.dtype)
            g = g * (m / cnt[:, None]).unsqueeze(-1)
            gw2 = torch.matmul(g.transpose(-1, -2), h)
            gb2 = g.sum(-2)
            dh = torch.matmul(g, w2) * (hp > 0)
            gw1 = torch.matmul(dh.transpose(-1, -2), xb)
            gb1 = dh.sum(-2)
            for p, buf, grad in zip(params, bufs, (gw1, gb1, gw2, gb2), strict=True):
                view = buf[:, :k]
                view.mul_(mom).add_(grad)
                p[:, :k].sub_(lr * view)
        flat = torch.cat([p.reshape(r, c, -1) for p in params], -1)
        out = torch.empty_like(flat)
        out[:, torch.from_numpy(self.order)] = flat
        return out

    @property
    def num_examples(self) -> np.ndarray:
        return np.asarray(self.sizes, dtype=np.float64)


def batched_predict(weights: torch.Tensor, x: np.ndarray) -> torch.Tensor:
    """Predicted labels (R, k) of R flat MLP weight vectors on ``x``."""
    w1, b1, w2, b2 = (
        p.reshape(-1, *s)
        for p, s in zip(
            torch.split(weights, [math.prod(s) for s in SHAPES], 1), SHAPES, strict=True
        )
    )
    xt = torch.from_numpy(x)
    h = torch.relu(torch.matmul(xt, w1.transpose(-1, -2)) + b1.unsqueeze(-2))
    return (torch.matmul(h, w2.transpose(-1, -2)) + b2.unsqueeze(-2)).argmax(-1)


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Server:
    """What the server knows besides the updates: its root data and its update on it."""

    root: Dataset
    root_delta: np.ndarray  # the server's own training update on ``root`` (FLTrust)

    def losses(self, weights: np.ndarray) -> np.ndarray:
        """Per-example cross-entropy of the flat MLP ``weights`` on the root data (the region
        server's scorer: ``fedgate.models.train.example_losses`` on its validation split)."""
        w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)[None, :])
        return batched_loss(w, self.root, reduction="none")[0].numpy().astype(np.float64)


# An aggregation step: (deltas (n, d) float32, global weights (d,), example counts (n,),
# the server) -> new global weights (d,).
Step = Callable[[np.ndarray, np.ndarray, np.ndarray, Server], np.ndarray]


@dataclass
class RuleSpec:
    """One run in a group: a label, its implementation and a factory for its step."""

    rule: str
    impl: str  # "fedgate" | "flower"
    make: Callable[[Setting], Step]
    min_n: Callable[[int], int] = lambda f: 1


def fedgate_step(name: str, pre: str | None = None, **params) -> Callable[[Setting], Step]:
    """A fedgate rule from ``build_rule`` (so its region defaults apply) as a step."""

    def make(setting: Setting) -> Step:
        from fedgate.strategies.rules import build_rule

        agg = build_rule(name, setting.f, pre, **params)
        agg.check(setting.n)

        def step(deltas, glob, counts, server):
            if hasattr(agg, "set_reference"):
                agg.set_reference(server.root_delta)  # FLTrust: the server's root update
            if hasattr(agg, "set_scorer"):
                agg.set_scorer(lambda delta: server.losses(glob + delta))
            if hasattr(agg, "set_probe"):  # the trigger scan: global weights, server data
                agg.set_probe(ScanProbe(glob, server.root.x, server.root.y, SHAPES))
            if hasattr(agg, "set_clients"):
                agg.set_clients(range(len(deltas)))  # every client, in a fixed order, each round
            return glob + np.asarray(agg(deltas, counts).vector, dtype=np.float32)

        def preview(deltas, glob, counts, server):
            """What ``step`` would return, leaving the rule's state (a CC centre) untouched:
            the defence an adaptive attacker queries."""
            nonlocal agg
            saved, agg = agg, copy.deepcopy(agg)
            try:
                return step(deltas, glob, counts, server)
            finally:
                agg = saved

        step.preview = preview  # type: ignore[attr-defined]
        return step

    return make


FLOWER_KINDS = ("fedavg", "krum", "multikrum", "bulyan", "fedmedian", "fedtrimmedavg")


def flower_strategy(kind: str, f: int, n: int):
    """Flower 1.41's built-in strategy ``kind`` configured for ``f`` Byzantine of ``n``.

    MultiKrum selects ``n - f`` updates; FedTrimmedAvg gets ``beta = (f + 0.5) / n`` so that
    its ``int(beta * n)`` trims exactly ``f`` per side, like fedgate's trimmed mean.
    """
    from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

    logging.getLogger("flwr").setLevel(logging.WARNING)
    factories = {
        "fedavg": lambda: FedAvg(),
        "krum": lambda: Krum(num_malicious_nodes=f),
        "multikrum": lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f),
        "bulyan": lambda: Bulyan(num_malicious_nodes=f),
        "fedmedian": lambda: FedMedian(),
        "fedtrimmedavg": lambda: FedTrimmedAvg(beta=(f + 0.5) / n),
    }
    if kind not in factories:
        raise ValueError(f"unknown Flower rule {kind!r}; known: {', '.join(factories)}")
    return factories[kind]()


@cache
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype=dtype), allow_pickle=False)
    data = buf.getvalue()
    return data[: len(data) - math.prod(shape) * np.dtype(dtype).itemsize]


def numpy_array(arr: np.ndarray):
    """``flwr.app.Array(arr)`` built without ``np.save`` (same bytes: cached .npy header)."""
    from flwr.app import Array

    arr = np.ascontiguousarray(arr)
    data = _npy_header(arr.dtype.str, arr.shape) + arr.tobytes()
    return Array(dtype=str(arr.dtype), shape=tuple(arr.shape), stype="numpy.ndarray", data=data)


def flower_replies(rows: np.ndarray, counts: np.ndarray, shapes=None) -> list:
    """One train-reply ``Message`` per row (weights split into ``shapes``; one array if None)."""
    from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    replies = []
    for i, (row, cnt) in enumerate(zip(rows, counts, strict=True)):
        if shapes is None:
            arrays = [row]
        else:
            arrays, pos = [], 0
            for shape in shapes:
                size = math.prod(shape)
                arrays.append(row[pos : pos + size].reshape(shape))
                pos += size
        record = ArrayRecord({str(j): numpy_array(a) for j, a in enumerate(arrays)})
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
            {"arrays": record, "metrics": MetricRecord({"num-examples": int(cnt)})}
        )
        replies.append(Message(content, metadata=meta))
    return replies


def flower_step(kind: str) -> Callable[[Setting], Step]:
    """Flower 1.41's own strategy ``aggregate_train`` on reply Messages holding full weights."""

    def make(setting: Setting) -> Step:
        strategy = flower_strategy(kind, setting.f, setting.n)

        def step(deltas, glob, counts, server):
            # One array per client: every Flower rule here works coordinate-wise or on
            # distances summed over arrays, so the result equals the per-layer one, with a
            # quarter of the (de)serialization.
            replies = flower_replies(glob[None, :] + deltas, counts)
            arrays, _ = strategy.aggregate_train(1, replies)
            if arrays is None:  # Flower skipped the round (e.g. Bulyan with n < 4f + 3)
                return glob
            return flatten(arrays.to_numpy_ndarrays())

        step.preview = step  # type: ignore[attr-defined]  # Flower's rules keep no state
        return step

    return make


def _bulyan_min(f: int) -> int:
    return 4 * f + 3


FLOWER_RULES: dict[str, RuleSpec] = {
    kind: RuleSpec(kind, "flower", flower_step(kind), *((_bulyan_min,) if kind == "bulyan" else ()))
    for kind in FLOWER_KINDS
}


# ----------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    rule: str
    impl: str
    accuracy: float
    backdoor_asr: float | None = None
    attack_free_asr: dict[str, float] | None = None  # per trigger, without an attacker
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
    trainer = BatchedTrainer([*fed.train, fed.root], setting)
    counts = trainer.num_examples[: setting.n]
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
        for spec, e in zip(specs, errors, strict=True)
    ]
    if not live:
        return results
    glob = np.repeat(initial_weights(setting.seed)[None, :], len(live), axis=0)
    beta = setting.client_momentum
    momenta = np.zeros((len(live), setting.n, DIM), dtype=np.float32)
    byz, honest = fed.byzantine, fed.honest
    for rnd in range(1, setting.rounds + 1):
        local = trainer.train(torch.from_numpy(glob), rnd).numpy()
        deltas = local - glob[:, None, :]
        for k, i in enumerate(live):
            if results[i].error:
                continue
            sent = deltas[k, : setting.n]
            if beta > 0:
                momenta[k] = sent if rnd == 1 else beta * momenta[k] + (1 - beta) * sent
                sent = momenta[k]
            upd = np.array(sent, dtype=np.float32, copy=True)
            server = Server(fed.root, deltas[k, setting.n])
            if len(byz):
                rng = np.random.default_rng([setting.seed, 7, rnd])
                ref = upd[honest] if setting.colluding else None
                extra = {}
                if getattr(fed.attack, "adaptive", False):
                    extra["defence"] = defence_oracle(steps[i], upd, byz, glob[k], counts, server)
                upd[byz] = fed.attack.craft(upd[byz], ref, setting.f, rng, n=setting.n, **extra)
            try:
                new = steps[i](upd, glob[k], counts, server)
                glob[k] = np.asarray(new, np.float32)
            except Exception as exc:
                results[i].error = f"round {rnd}: {type(exc).__name__}: {exc}"
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
        w = torch.from_numpy(np.nan_to_num(glob[k : k + 1]))

        def success(trigger: str, w=w) -> float:
            return backdoor_success_rate(
                lambda x: batched_predict(w, x)[0].numpy(), fed.test, trigger=trigger
            )

        if fed.attack.name in BACKDOORS:
            res.backdoor_asr = success(BACKDOORS[fed.attack.name])
        elif fed.attack.name == "none":  # the floor: triggered inputs sent to the target anyway
            res.attack_free_asr = {t: success(t) for t in sorted(set(BACKDOORS.values()))}
    return results


def defence_oracle(step: Step, upd, byz, glob, counts, server) -> Callable:
    """The defended aggregate (new weights minus ``glob``) of ``step`` if the attackers
    ``byz`` sent the rows ``mal`` and everyone else ``upd``: what an adaptive attacker that
    knows the rule (and the server's data, the strongest case) optimises against."""
    preview = getattr(step, "preview", step)

    def defence(mal: np.ndarray) -> np.ndarray:
        trial = np.array(upd, copy=True)
        trial[byz] = mal
        return np.asarray(preview(trial, glob, counts, server), dtype=np.float64) - glob

    return defence


def batched_loss(weights: torch.Tensor, data: Dataset, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of R flat MLP weight vectors on ``data``: (R,) means, or (R, m) per
    example with ``reduction="none"``."""
    w1, b1, w2, b2 = (
        p.reshape(-1, *s)
        for p, s in zip(
            torch.split(weights, [math.prod(s) for s in SHAPES], 1), SHAPES, strict=True
        )
    )
    xt = torch.from_numpy(data.x)
    h = torch.relu(torch.matmul(xt, w1.transpose(-1, -2)) + b1.unsqueeze(-2))
    logits = torch.matmul(h, w2.transpose(-1, -2)) + b2.unsqueeze(-2)
    y = torch.from_numpy(data.y)
    return torch.stack(
        [torch.nn.functional.cross_entropy(lg, y, reduction=reduction) for lg in logits]
    )


def _accuracy(glob: np.ndarray, test: Dataset) -> np.ndarray:
    safe = np.nan_to_num(glob, nan=0.0, posinf=0.0, neginf=0.0)
    pred = batched_predict(torch.from_numpy(safe), test.x).numpy()
    acc = (pred == test.y[None, :]).mean(1)
    acc[~np.all(np.isfinite(glob), axis=1)] = 0.0
    return acc
