"""Envelope verification cost against the robust aggregation of the same round.

For each model size d (float32), n clients each send a signed update (a Flower
``ArrayRecord`` whose ``.npy`` payloads are what the server receives). Measured in the same
run, on the same data:

* verification of one update: ``open_envelope`` in full: parse and check the envelope's
  canonical JSON, Ed25519-verify it, canonicalize and SHA-256 the arrays, check run, round,
  nonce, base model, metrics and the replay guard;
* aggregation of the round: the region's default rule
  (``build_rule(REGION_DEFAULT.aggregator, f, REGION_DEFAULT.pre)``) on the ``(n, d)``
  float32 matrix of the updates' deltas, a fresh rule per repetition.

``overhead_ratio`` = (verification of all n updates) / (aggregation). Target: <= 0.05.
For context the table also shows the SHA-256 floor (hashing the same bytes with nothing
else) and the digest through ``Array.numpy()`` (a copy per array, the old path), and the
strategy's own preparation (flatten and stack the n updates) that the ratio leaves out.
Every figure is the median of ``--repeats`` runs; verification and aggregation alternate, so
both see the same load on a shared machine.

Then the round as the server lives it (``--spacing``): the n replies reach a scripted Grid
one every ``spacing`` seconds (clients finishing at different times) and ``RobustStrategy``
pulls them (``fedgate.strategies.arrival.exchange``) and aggregates. Measured: the time from
the last reply's arrival to the aggregate, for

* ``no verification``: the structural screen only (shape, dtype, finite values);
* ``on arrival``: the region's full screen (``signature_screen``), each reply checked in the
  strategy's thread pool as soon as it is pulled (``ArrivalScreening``);
* ``after the last``: the same full screen run only once every reply is in (the old path).

``latency_ratio`` = on arrival / no verification. Target: <= 1.05.

    python benchmarks/verification.py [--d 100000 1000000] [--n 50] [--f 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedgate.canonical_arrays import arrays_digest
from fedgate.crypto import fingerprint, generate_key, public_bytes
from fedgate.server.region.nonces import ReplayGuard, RoundNonces
from fedgate.strategies.arrival import exchange
from fedgate.strategies.envelope import (
    RECORD_KEY,
    arrayrecord_digest,
    open_envelope,
    sign_update,
    signature_screen,
)
from fedgate.strategies.robust_strategy import RobustStrategy, structural_screen
from fedgate.strategies.rules import REGION_DEFAULT, build_rule

TARGET = 0.05
LATENCY_TARGET = 1.05
REGION, RUN, ROUND = "eu", "bench-run", 7
WIDTH = 1000  # model layout: weight (d / WIDTH - 1, WIDTH) and bias (WIDTH,)


@dataclass(frozen=True)
class Row:
    """A registered device (``DeviceLookup`` row)."""

    region: str
    public_key: bytes
    revoked: bool = False


@dataclass
class Round:
    """One round's inputs as the region server holds them."""

    base: ArrayRecord
    updates: list[ArrayRecord]
    envelopes: list[ConfigRecord]
    metrics: list[MetricRecord]
    registry: dict[str, Row]
    nonce: str


def model_arrays(d: int, rng: np.random.Generator, base: dict | None = None) -> dict:
    if d % WIDTH or d < 2 * WIDTH:
        raise SystemExit(f"--d must be a multiple of {WIDTH} and at least {2 * WIDTH}, got {d}")
    if base is None:
        return {
            "weight": rng.standard_normal((d // WIDTH - 1, WIDTH), dtype=np.float32),
            "bias": rng.standard_normal(WIDTH, dtype=np.float32),
        }
    return {k: v + 0.01 * rng.standard_normal(v.shape, dtype=np.float32) for k, v in base.items()}


def make_round(d: int, n: int, seed: int) -> Round:
    rng = np.random.default_rng(seed)
    base_np = model_arrays(d, rng)
    base = ArrayRecord({k: Array(v) for k, v in base_np.items()})
    nonce = RoundNonces()(ROUND)
    updates, envelopes, metrics, registry = [], [], [], {}
    for i in range(n):
        key = generate_key()
        registry[fingerprint(key)] = Row(REGION, public_bytes(key))
        arrays = ArrayRecord({k: Array(v) for k, v in model_arrays(d, rng, base_np).items()})
        m = {"train-loss": 0.5 + i / 100, "num-examples": 100 + i}
        envelopes.append(
            sign_update(
                key,
                region=REGION,
                run_id=RUN,
                server_round=ROUND,
                nonce=nonce,
                base=base,
                arrays=arrays,
                metrics=m,
            )
        )
        updates.append(arrays)
        metrics.append(MetricRecord(m))
    return Round(base, updates, envelopes, metrics, registry, nonce)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def verify_all(r: Round, global_digest: str) -> None:
    seen = ReplayGuard()
    for record, arrays, metrics in zip(r.envelopes, r.updates, r.metrics, strict=True):
        open_envelope(
            record,
            arrays,
            expected_region=REGION,
            run_id=RUN,
            server_round=ROUND,
            nonce=r.nonce,
            global_digest=global_digest,
            registry=r.registry,
            metrics=metrics,
            seen=seen,
        )


def flatten(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.numpy().ravel() for a in record.values()])


def bench(d: int, n: int, f: int, repeats: int, seed: int) -> dict[str, Any]:
    r = make_round(d, n, seed)
    global_digest = arrayrecord_digest(r.base)
    base = flatten(r.base)
    deltas = np.stack([flatten(u) - base for u in r.updates])
    weights = np.array([m["num-examples"] for m in r.metrics], dtype=np.float64)

    def verify() -> None:
        verify_all(r, global_digest)

    def aggregate() -> None:  # a fresh rule: the same first round every time
        build_rule(REGION_DEFAULT.aggregator, f, REGION_DEFAULT.pre)(deltas, weights)

    verify()  # warm up, and fail loudly if anything does not verify
    aggregate()
    # Interleaved, so both see the same (shared) machine.
    timings: dict[str, list[float]] = {"verify": [], "aggregate": []}
    for _ in range(repeats):
        for name, fn in (("verify", verify), ("aggregate", aggregate)):
            t0 = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - t0)
    verification = statistics.median(timings["verify"])
    aggregation = statistics.median(timings["aggregate"])

    payloads = [memoryview(a.data) for u in r.updates for a in u.values()]
    floor = median_time(lambda: [hashlib.sha256(p).digest() for p in payloads], repeats)
    digest = median_time(lambda: [arrayrecord_digest(u) for u in r.updates], repeats)
    copying = median_time(
        lambda: [arrays_digest([(k, a.numpy()) for k, a in u.items()]) for u in r.updates],
        repeats,
    )
    prep = median_time(lambda: np.stack([flatten(u) - base for u in r.updates]), repeats)
    return {
        "d": d,
        "n": n,
        "verify_seconds_per_update": verification / n,
        "aggregation_seconds": aggregation,
        "overhead_ratio": verification / aggregation,
        "_floor_per_update": floor / n,
        "_digest_per_update": digest / n,
        "_copying_digest_per_update": copying / n,
        "_prep_seconds": prep,
    }


class ScriptedGrid(Grid):
    """A Grid whose n replies become pullable one every ``spacing`` seconds after the push;
    ``last_arrival`` is when the last one was pulled (``time.perf_counter``)."""

    def __init__(self, replies: dict[int, RecordDict], spacing: float) -> None:
        self.replies, self.spacing = replies, spacing
        self.due: list[tuple[float, Message]] = []
        self.last_arrival = 0.0

    def get_node_ids(self) -> list[int]:
        return sorted(self.replies)

    def push_messages(self, messages) -> list[str]:
        t0, ids = time.perf_counter(), []
        for i, msg in enumerate(messages):
            mid = f"m{i}"
            node = msg.metadata.dst_node_id
            meta = Metadata(
                run_id=1, message_id=f"r{i}", src_node_id=node, dst_node_id=0,
                reply_to_message_id=mid, group_id=str(ROUND), created_at=time.time(),
                ttl=3600.0, message_type=msg.metadata.message_type,
            )  # fmt: skip
            self.due.append(
                (t0 + (i + 1) * self.spacing, Message(self.replies[node], metadata=meta))
            )
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        now = time.perf_counter()
        ready = [
            m for t, m in self.due if t <= now and m.metadata.reply_to_message_id in message_ids
        ]
        self.due = [(t, m) for t, m in self.due if m not in ready]
        if ready:
            self.last_arrival = time.perf_counter()
        return ready

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        return exchange(self, messages, timeout)

    def create_message(self, *args, **kwargs) -> Message:  # not used by the strategy
        raise NotImplementedError

    def set_run(self, run) -> None:
        pass

    @property
    def run(self):
        return None


def round_latency(r: Round, f: int, spacing: float, mode: str) -> float:
    """Seconds from the last reply's arrival to the aggregate, for one ``mode``
    (``none`` | ``arrival`` | ``after``)."""
    contents = {
        node: RecordDict({"arrays": arrays, "metrics": metrics, RECORD_KEY: envelope})
        for node, (arrays, metrics, envelope) in enumerate(
            zip(r.updates, r.metrics, r.envelopes, strict=True), start=1
        )
    }
    screen = structural_screen
    if mode != "none":
        screen = signature_screen(
            r.registry, REGION, RUN, lambda _: r.nonce, structural_screen, seen=ReplayGuard()
        )
    n = len(contents)
    strategy = RobustStrategy(
        build_rule(REGION_DEFAULT.aggregator, f, REGION_DEFAULT.pre),
        clients_per_round=n, min_clients=n, screen=screen,
    )  # fmt: skip
    grid = ScriptedGrid(contents, spacing)
    try:
        batch = strategy.configure_train(ROUND, r.base, ConfigRecord(), grid)
        on_reply = None if mode == "after" else strategy.arrival.arrived
        replies = exchange(grid, batch, None, on_reply, interval=spacing / 4, max_interval=spacing)
        arrays, _ = strategy.aggregate_train(ROUND, replies)
        done = time.perf_counter()
    finally:
        strategy.arrival.close()
    record = strategy.rounds[-1]
    if arrays is None or record.accepted != n:
        raise SystemExit(f"{mode}: the round did not accept all {n} updates: {record}")
    return done - grid.last_arrival


def bench_arrival(d: int, n: int, f: int, spacing: float, repeats: int, seed: int) -> dict:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as a ServerApp
    r = make_round(d, n, seed)
    modes = ("none", "arrival", "after")
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:  # warm up (threads, BLAS, caches)
        round_latency(r, f, spacing, m)
    for _ in range(repeats):  # interleaved, so all see the same (shared) machine
        for m in modes:
            times[m].append(round_latency(r, f, spacing, m))
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        "d": d,
        "n": n,
        "spacing_s": spacing,
        "latency_no_verification_s": med["none"],
        "latency_verify_on_arrival_s": med["arrival"],
        "latency_verify_after_last_s": med["after"],
        "latency_ratio": med["arrival"] / med["none"],
        "latency_ratio_after_last": med["after"] / med["none"],
    }


def arrival_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "time from the last reply's arrival to the aggregate (RobustStrategy.aggregate_train, "
        f"median of repeats); target on-arrival/none <= {LATENCY_TARGET}",
        f"{'d':>9} {'n':>3} {'spacing':>8} {'no verif.':>10} {'on arrival':>10} "
        f"{'after last':>10} {'ratio':>6} {'old ratio':>9}",
    ]
    for row in rows:
        lines.append(
            f"{row['d']:>9} {row['n']:>3} {row['spacing_s'] * 1e3:>6.0f}ms "
            f"{row['latency_no_verification_s']:>9.3f}s "
            f"{row['latency_verify_on_arrival_s']:>9.3f}s "
            f"{row['latency_verify_after_last_s']:>9.3f}s {row['latency_ratio']:>6.3f} "
            f"{row['latency_ratio_after_last']:>9.3f}"
            f"  {'met' if row['latency_ratio'] <= LATENCY_TARGET else 'MISSED'}"
        )
    lines += [
        "no verif.   structural screen only; on arrival: full screen in the strategy's pool as",
        "            each reply is pulled; after last: full screen once all replies are in",
    ]
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], f: int) -> str:
    rule = "+".join(filter(None, [REGION_DEFAULT.pre, REGION_DEFAULT.aggregator]))
    ms = 1e3
    lines = [
        f"rule {rule} (REGION_DEFAULT) with f={f}; float32 updates; median of repeats; "
        f"target overhead_ratio <= {TARGET}",
        f"{'d':>9} {'n':>3} {'verify/upd':>10} {'digest/upd':>10} {'numpy() dig':>11} "
        f"{'sha256 only':>11} {'aggregation':>11} {'ratio':>6} {'prep':>7} {'ratio+prep':>10}",
    ]
    for row in rows:
        n, verify = row["n"], row["verify_seconds_per_update"]
        with_prep = n * verify / (row["aggregation_seconds"] + row["_prep_seconds"])
        lines.append(
            f"{row['d']:>9} {n:>3} {verify * ms:>8.3f}ms {row['_digest_per_update'] * ms:>8.3f}ms "
            f"{row['_copying_digest_per_update'] * ms:>9.3f}ms "
            f"{row['_floor_per_update'] * ms:>9.3f}ms {row['aggregation_seconds']:>10.3f}s "
            f"{row['overhead_ratio']:>6.3f} {row['_prep_seconds']:>6.3f}s {with_prep:>10.3f}"
            f"  {'met' if row['overhead_ratio'] <= TARGET else 'MISSED'}"
        )
    lines += [
        "verify/upd   open_envelope on one update (JSON, Ed25519, canonical arrays + SHA-256,",
        "             round/nonce/base/metrics/replay checks)",
        "digest/upd   arrayrecord_digest alone (zero-copy view of the .npy payloads)",
        "numpy() dig  the same digest through Array.numpy() (a copy per array; the old path)",
        "sha256 only  hashlib over the raw payload bytes, nothing else: the floor",
        "aggregation  the rule on the (n, d) delta matrix; ratio = n * verify/upd / aggregation",
        "prep         RobustStrategy's flatten + stack of the n updates, outside the rule;",
        "             ratio+prep counts it as aggregation time",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--n", type=int, default=50, help="clients per round")
    parser.add_argument("--f", type=int, default=10, help="Byzantine clients the rule tolerates")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--spacing",
        type=float,
        default=0.02,
        help="seconds between two replies' arrival in the round latency part",
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the round latency part")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be at least 1")
    try:
        build_rule(REGION_DEFAULT.aggregator, args.f, REGION_DEFAULT.pre).check(args.n)
    except ValueError as exc:
        parser.error(f"--f {args.f} with --n {args.n}: {exc}")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = [bench(d, args.n, args.f, args.repeats, args.seed) for d in args.d]
    print(table(rows, args.f), flush=True)
    latency = []
    if not args.no_latency:
        latency = [
            bench_arrival(d, args.n, args.f, args.spacing, args.repeats, args.seed) for d in args.d
        ]
        print(arrival_table(latency))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        public = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        doc = {"per_update": public, "round_latency": latency}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
