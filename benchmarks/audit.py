"""Audit-log benchmark: append and verification throughput on SQLite and PostgreSQL.

Appends are measured one event per transaction and batched (one transaction per batch,
as a round's events are written, with the head signed per batch). Verification recomputes
the whole chain and checks every signed head from a read-only engine. PostgreSQL runs in
its own throwaway cluster (``fedgate.server.db.pgcluster``) with durable settings
(fsync on). Targets: append >= 5,000 events/s batched, verify >= 100,000 events/s.

Merkle proofs (``--proof-events``, default 1e6, SQLite): a log of that many events is built
through ``AuditLog`` and checkpointed once; then inclusion proofs of random events are generated
from the database (``checkpoints.prove_inclusion``: O(log n) stored subtree hashes, no leaf
rehashed) and verified as an outsider does (``tlog_proofs.check_inclusion``: the checkpoint's
Ed25519 signature and the RFC 9162 path), per second; consistency proofs likewise. Checkpoint
cost per round: a round's events are appended in one transaction, then the checkpoint is signed
in its own (hashing that round's events and writing its subtrees); reported as the ratio of the
two times, on a fresh log and on the big one.

    python benchmarks/audit.py [--events 50000] [--batch 500] [--proof-events 1000000]
                               [--web-only | --no-web | --tree-only] [--json FILE]

Verify with and without the Merkle tree (``--tree-only``, and inside the proofs' part): the
same log verified both ways, interleaved, best of 7, wall and CPU time; the checkpoints'
Ed25519 signature checks timed alone on the same notes, so the tree's recomputation (leaf and
node hashing, one pass over the bytes the chain check already built) is reported apart; goal:
the tree alone costs at most 1.2x verify without it.

The web view's part (``bench_web``, ``--web-only``/``--no-web``): the auditor's round page for a
round of 1,000 clients and the runs list over 10,000 runs, rendered in-process (FastAPI's
TestClient) against one SQLite region database holding both; goal under 300 ms each once the
chain is verified and folded (the first request, which does that, is reported apart), with the
time of one verification of the same chain as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedgate.crypto import fingerprint, generate_key
from fedgate.server.audit import AuditLog, verify_database
from fedgate.server.db import open_database, open_readonly
from fedgate.server.db.pgcluster import PgCluster

APPEND_TARGET, VERIFY_TARGET = 5_000, 100_000
TREE_RATIO_GOAL = 1.2  # verify with the Merkle tree recomputed / without
WEB_TARGET_MS = 300.0


def _payload(i: int) -> dict[str, Any]:
    """An update verdict as the regional server records it."""
    return {
        "run": "bench",
        "round": i // 100,
        "node": str(10**12 + i),
        "device": "ab" * 32,
        "digest": "cd" * 32,
        "num_examples": 100 + i % 50,
        "reason": "",
        "detail": "",
    }


def bench(url: str, events: int, batch: int, singles: int) -> dict[str, float]:
    key = generate_key()
    log = AuditLog(open_database(url), signer=key)
    t0 = time.perf_counter()
    for i in range(singles):
        log.append("update.accepted", _payload(i))
    single = singles / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for start in range(0, events, batch):
        n = min(batch, events - start)
        log.append_many([("update.accepted", _payload(start + j)) for j in range(n)], sign=True)
    batched = events / (time.perf_counter() - t0)

    ro = open_readonly(url)
    keys = {fingerprint(key): key.public_key()}
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        report = verify_database(ro, keys)
        best = max(best, report.events / (time.perf_counter() - t0))
        if not report.ok or report.events != events + singles:
            raise SystemExit(f"verification failed: {report.first}")
    ro.dispose()
    return {
        "append_single_per_s": single,
        "append_batched_per_s": batched,
        "verify_per_s": best,
        "events": report.events,
        "signed_heads": report.signed_heads,
    }


def _round_events(run: str, rnd: int, clients: int) -> list[tuple[str, dict[str, Any]]]:
    """A round as the region records it: opened, one verdict per client, closed."""
    events: list[tuple[str, dict[str, Any]]] = [("round.opened", {"run": run, "round": rnd})]
    events += [("update.accepted", _payload(rnd * clients + c)) for c in range(clients)]
    return [*events, ("round.closed", {"run": run, "round": rnd, "model": "ef" * 32})]


def _checkpoint_ratio(log: AuditLog, key: Any, rounds: int, clients: int) -> dict[str, float]:
    """A round's events and its checkpoint written in one transaction, as the region does
    (``sign_in`` checkpoints in the round's transaction): median time of the checkpoint over
    the time of appending the round's events, and over the whole transaction (commit included).
    """
    from statistics import median

    from fedgate.server.audit.checkpoints import checkpoint_in
    from fedgate.server.db.engine import run_write

    appends, checkpoints, totals = [], [], []
    for rnd in range(rounds):
        items = _round_events("ratio", rnd, clients)

        def write(conn: Any, items: list = items) -> tuple[float, float]:
            t0 = time.perf_counter()
            (last,) = log.append_in(conn, items)[-1:]
            t1 = time.perf_counter()
            checkpoint_in(conn, key, log.chain_id, last.seq)
            return t1 - t0, time.perf_counter() - t1

        t0 = time.perf_counter()
        append, checkpoint = run_write(log.engine, write, "a round and its checkpoint")
        totals.append(time.perf_counter() - t0)
        appends.append(append)
        checkpoints.append(checkpoint)
    a, c, t = median(appends), median(checkpoints), median(totals)
    return {"append_round_ms": a * 1e3, "checkpoint_ms": c * 1e3, "transaction_ms": t * 1e3,
            "ratio": c / a, "share_of_transaction": c / t,
            "events_per_round": clients + 2}  # fmt: skip


def _verify_cost(url: str, events: int, clients: int, repeat: int = 7) -> dict[str, float]:
    """Verification with the Merkle checkpoints (the tree recomputed from the events' bytes,
    every checkpoint's signature checked) against without, on the same log of ``events``
    events written as rounds (a signed head and a checkpoint each), interleaved, best of
    ``repeat`` each, in wall time and in this process's CPU time (less disturbed by other
    load). The checkpoints' signature checks are also timed alone on the same notes, so the
    tree's own share (leaf and node hashing) is reported apart from them."""
    from fedgate.checkpoint import open_checkpoint
    from fedgate.server.audit.checkpoints import stored_checkpoints

    key = generate_key()
    log = AuditLog(open_database(url), signer=key)
    for rnd in range(max(1, events // (clients + 2))):
        log.append_many(_round_events("verify", rnd, clients), sign=True)
    ro = open_readonly(url)
    keys = {fingerprint(key): key.public_key()}
    wall = {True: float("inf"), False: float("inf")}
    cpu = dict(wall)
    count = 0
    for _ in range(repeat):
        for checkpoints in (True, False):
            w0, c0 = time.perf_counter(), time.process_time()
            report = verify_database(ro, keys, checkpoints=checkpoints)
            cpu[checkpoints] = min(cpu[checkpoints], time.process_time() - c0)
            wall[checkpoints] = min(wall[checkpoints], time.perf_counter() - w0)
            if not report.ok:
                raise SystemExit(f"verification failed: {report.first}")
            count = report.events
    with ro.connect() as conn:
        notes = [c.note for c in stored_checkpoints(conn)]
    pub = key.public_key()
    signatures = float("inf")
    for _ in range(repeat):
        c0 = time.process_time()
        for note in notes:
            open_checkpoint(note, pub)
        signatures = min(signatures, time.process_time() - c0)
    ro.dispose()
    return {
        "events": count, "checkpoints": len(notes),
        "verify_per_s": count / wall[True], "verify_per_s_without_checkpoints": count / wall[False],
        "ratio": wall[True] / wall[False], "cpu_ms": cpu[True] * 1e3,
        "cpu_ms_without_checkpoints": cpu[False] * 1e3, "cpu_ratio": cpu[True] / cpu[False],
        "checkpoint_signatures_cpu_ms": signatures * 1e3,
        "tree_cpu_ratio": (cpu[True] - signatures) / cpu[False],
    }  # fmt: skip


def print_verify_cost(v: dict[str, float]) -> None:
    print(f"verify {v['events']:,} events ({v['checkpoints']} checkpoints): "
          f"{v['verify_per_s']:,.0f} events/s with the checkpoints checked, "
          f"{v['verify_per_s_without_checkpoints']:,.0f}/s without: ratio {v['ratio']:.2f} "
          f"(wall); CPU {v['cpu_ms']:.0f} ms vs {v['cpu_ms_without_checkpoints']:.0f} ms: "
          f"ratio {v['cpu_ratio']:.2f}, of which the checkpoints' signatures "
          f"{v['checkpoint_signatures_cpu_ms']:.0f} ms; the tree alone: ratio "
          f"{v['tree_cpu_ratio']:.2f} (goal <= {TREE_RATIO_GOAL})")  # fmt: skip


def bench_proofs(url: str, events: int, samples: int, clients: int) -> dict[str, Any]:
    """Proof generation and verification at ``events`` events; checkpoint cost per round."""
    import random

    from fedgate.server.audit.checkpoints import (
        latest_checkpoint,
        prove_consistency,
        prove_inclusion,
    )
    from fedgate.tlog_proofs import check_consistency, check_inclusion

    key = generate_key()
    fresh = AuditLog(open_database(url.replace(".db", "-fresh.db")), signer=key)
    small = _checkpoint_ratio(fresh, key, 20, clients)

    log = AuditLog(open_database(url), signer=key)
    t0 = time.perf_counter()
    step = 20_000
    for start in range(0, events, step):
        n = min(step, events - start)
        log.append_many([("update.accepted", _payload(start + j)) for j in range(n)])
        print(f"  building the log: {start + n:,}/{events:,} events", file=sys.stderr, end="\r")
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    log.sign_head()  # the first checkpoint hashes every event once and stores the tree
    first_checkpoint = time.perf_counter() - t0
    print(file=sys.stderr)
    big = _checkpoint_ratio(log, key, 20, clients)

    rng = random.Random(0)
    pub = key.public_key()
    ro = open_readonly(url)
    chain = log.chain_id
    with ro.connect() as conn:
        seqs = [rng.randint(1, events) for _ in range(samples)]
        t0 = time.perf_counter()
        proofs = [prove_inclusion(conn, chain, s) for s in seqs]
        gen = samples / (time.perf_counter() - t0)
        latest = latest_checkpoint(conn)
        olds = [
            _old_note(conn, chain, rng.randint(1, latest.size), key) for _ in range(samples // 4)
        ]
        t0 = time.perf_counter()
        cons = [prove_consistency(conn, chain, old, latest) for old in olds]
        cons_gen = len(olds) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for proof in proofs:
        check_inclusion(proof, pub)
    ver = samples / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for proof in cons:
        check_consistency(proof, pub)
    cons_ver = len(cons) / (time.perf_counter() - t0)
    ro.dispose()
    return {
        "events": latest.size,
        "build_events_per_s": events / build,
        "first_checkpoint_s": first_checkpoint,
        "inclusion_generated_per_s": gen,
        "inclusion_verified_per_s": ver,
        "consistency_generated_per_s": cons_gen,
        "consistency_verified_per_s": cons_ver,
        "checkpoint_per_round_fresh_log": small,
        "checkpoint_per_round_big_log": big,
        "verify_with_checkpoints": _verify_cost(url.replace(".db", "-verify.db"), 50_000, clients),
    }


def _old_note(conn: Any, chain: str, size: int, key: Any) -> bytes:
    """The checkpoint of the log at ``size`` (signed here, as the log signed it back then)."""
    from fedgate.checkpoint import Checkpoint, sign_checkpoint
    from fedgate.merkle import root
    from fedgate.server.audit.checkpoints import StoredNodes
    from fedgate.tlog_proofs import audit_origin

    tree_root = root(size, StoredNodes(conn, chain))
    return sign_checkpoint(Checkpoint(audit_origin(chain), size, tree_root), key).encode()


# -- the auditor's web view (server/auditweb) ---------------------------------------------------


def _web_home(home: Path, runs: int, clients: int) -> str:
    """A region database with ``runs`` small runs (two clients, one round each) and one run
    whose round has ``clients`` clients, written as the Store writes them."""
    from sqlalchemy import insert

    from fedgate.server.audit.round_rows import round_write
    from fedgate.server.audit.store import METRICS, ROUNDS, RUNS, UPDATES, Store
    from fedgate.server.db.engine import write_txn

    home.mkdir(parents=True, exist_ok=True)
    store = Store.open(f"sqlite:///{home / 'region-eu.db'}")

    def fates(n: int) -> list[dict[str, Any]]:
        return [{"node_id": 10**12 + i, "accepted": i % 10 != 9, "device_id": f"{i:064x}",
                 "digest": f"{i + 1:064x}", "num_examples": 50 + i % 40,
                 "reason": "" if i % 10 != 9 else "bad-signature",
                 "fate": "kept" if i % 10 != 9 else "", "score": i / n, "weight": 1 / n}
                for i in range(n)]  # fmt: skip

    def write(run: str, n: int, conn: Any) -> None:
        started = datetime.now(UTC)
        config = {"rounds": 1, "aggregator": "cc", "seed": run}
        conn.execute(insert(RUNS).values(id=run, region="eu", launched_by="ops", config=config,
                                         status="finished", started_at=started,
                                         finished_at=started))  # fmt: skip
        rows = round_write(run, {"round": 1, "clients": fates(n), "aggregated": True,
                                 "metrics": {"val-acc": 0.9, "val-loss": 0.3}})  # fmt: skip
        conn.execute(insert(ROUNDS).values(**rows.round, closed_at=started))
        conn.execute(insert(UPDATES), rows.updates)
        conn.execute(insert(METRICS), rows.metrics)
        launched = ("run.launched", {"run": run, "region": "eu", "launched_by": "ops",
                                     "config": config})  # fmt: skip
        finished = ("run.finished", {"run": run, "status": "finished", "note": ""})
        store.audit.append_in(conn, [launched, *rows.events, finished])

    for start in range(0, runs, 1000):
        with write_txn(store.engine) as conn:
            for k in range(start, min(runs, start + 1000)):
                write(f"r{k:05d}", 2, conn)
    with write_txn(store.engine) as conn:
        write("big", clients, conn)
    store.engine.dispose()
    return "big"


def _timed_ms(client: Any, path: str, repeat: int) -> dict[str, float]:
    """Median and best of ``repeat`` requests (the best is the least disturbed by the other
    processes of a busy machine)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        if answer.status_code != 200:
            raise SystemExit(f"{path}: HTTP {answer.status_code}")
    return {"median": sorted(times)[len(times) // 2], "best": min(times)}


def bench_web(tmp: Path, runs: int = 10_000, clients: int = 1_000, repeat: int = 11) -> dict:
    """The round page (``clients`` clients) and the runs list (``runs`` runs), in-process."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from fastapi.testclient import TestClient

    from fedgate.server.auditweb.app import create_app
    from fedgate.server.auditweb.sources import discover

    home = tmp / "web"
    t0 = time.perf_counter()
    big = _web_home(home, runs, clients)
    built = time.perf_counter() - t0
    engine = open_readonly(f"sqlite:///{home / 'region-eu.db'}")
    t0 = time.perf_counter()
    report = verify_database(engine, None)
    verify_ms = (time.perf_counter() - t0) * 1000
    engine.dispose()
    client = TestClient(create_app(discover(home), ttl=3600))
    t0 = time.perf_counter()
    first = client.get("/runs")
    cold_ms = (time.perf_counter() - t0) * 1000
    if first.status_code != 200 or client.get("/api/runs").json()["table"]["total"] != runs + 1:
        raise SystemExit("the runs list does not show every run")
    pages = {
        "runs list (50 per page)": "/runs",
        "runs list (1,000 per page)": "/runs?per_page=1000",
        "runs list filtered (q=r0999)": "/runs?q=r0999",
        f"round page ({clients} clients, 50 per page)": f"/runs/eu/{big}/rounds/1",
        f"round page ({clients} clients, all on one page)":
            f"/runs/eu/{big}/rounds/1?per_page={min(clients, 1000)}",
    }  # fmt: skip
    t0 = time.perf_counter()
    client.get(f"/runs/eu/{big}/rounds/1")  # its first visit compares the mirror tables' rows
    round_first_ms = (time.perf_counter() - t0) * 1000
    timed = {name: _timed_ms(client, path, repeat) for name, path in pages.items()}
    return {"runs": runs + 1, "clients": clients, "events": report.events,
            "build_s": built, "verify_ms": verify_ms, "first_request_ms": cold_ms,
            "round_first_visit_ms": round_first_ms,
            "pages_ms": timed, "load_average": os.getloadavg()[0],
            "met": all(v["median"] < WEB_TARGET_MS for v in timed.values())}  # fmt: skip


def print_web(r: dict[str, Any]) -> None:
    print(f"web view: {r['runs']:,} runs, {r['events']:,} events; one verification of the "
          f"chain {r['verify_ms']:,.0f} ms (baseline); first request (verify + fold + render) "
          f"{r['first_request_ms']:,.0f} ms; a round's first visit (compares its "
          f"{r['clients']:,} mirror rows) {r['round_first_visit_ms']:,.0f} ms")  # fmt: skip
    for name, ms in r["pages_ms"].items():
        print(f"  {name:<46} median {ms['median']:>7.1f} ms, best {ms['best']:>7.1f} ms "
              f"({ms['median'] / r['verify_ms']:.3f} x verify)")  # fmt: skip
    print(f"target (each page's median < {WEB_TARGET_MS:.0f} ms once verified): "
          f"{'met' if r['met'] else 'NOT met'} (load average {r['load_average']:.1f})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events appended in batches")
    parser.add_argument("--batch", type=int, default=500, help="events per transaction")
    parser.add_argument("--singles", type=int, default=1_000, help="one-event transactions")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--proof-events",
        type=int,
        default=1_000_000,
        help="events in the log the proofs are measured on (0: skip)",
    )
    parser.add_argument("--proof-samples", type=int, default=2_000, help="proofs generated")
    parser.add_argument("--clients", type=int, default=100, help="clients per round")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-web", action="store_true", help="skip the web view's part")
    parser.add_argument("--web-only", action="store_true", help="only the web view's part")
    parser.add_argument("--web-runs", type=int, default=10_000, help="runs in the runs list")
    parser.add_argument("--web-clients", type=int, default=1_000, help="clients in the round")
    parser.add_argument(
        "--tree-only",
        action="store_true",
        help="only verify with and without the Merkle tree (--events events)",
    )
    args = parser.parse_args(argv)
    if args.tree_only:
        with tempfile.TemporaryDirectory() as tmp:
            cost = _verify_cost(f"sqlite:///{Path(tmp) / 'tree.db'}", args.events, args.clients)
        print_verify_cost(cost)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"verify_with_checkpoints": cost}, indent=2) + "\n")
        return 0 if cost["tree_cpu_ratio"] <= TREE_RATIO_GOAL else 1
    if args.web_only:
        args.backends, args.proof_events = "", 0

    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "events": args.events,
        "batch": args.batch,
        "backends": {},
    }
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            if backend == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'bench.db'}"
                results["backends"][backend] = bench(url, args.events, args.batch, args.singles)
            elif backend == "postgresql":
                with PgCluster(fast=False) as cluster:
                    url = cluster.create_database("bench")
                    results["backends"][backend] = bench(url, args.events, args.batch, args.singles)
            else:
                parser.error(f"unknown backend {backend!r}")
        if args.proof_events:
            url = f"sqlite:///{Path(tmp) / 'proofs.db'}"
            results["proofs"] = bench_proofs(url, args.proof_events, args.proof_samples,
                                             args.clients)  # fmt: skip
        if not args.no_web:
            results["web"] = bench_web(Path(tmp), args.web_runs, args.web_clients)

    # no backend measured: no append/verify target met (unless only the web view was asked for)
    ok = bool(results["backends"]) or args.web_only
    if backends:
        print(
            f"{'backend':<11} {'append/s (1 per txn)':>21} {'append/s (batched)':>19} "
            f"{'verify/s':>10}"
        )
    for backend, r in results["backends"].items():
        print(
            f"{backend:<11} {r['append_single_per_s']:>21,.0f} {r['append_batched_per_s']:>19,.0f}"
            f" {r['verify_per_s']:>10,.0f}"
        )
        ok &= r["append_batched_per_s"] >= APPEND_TARGET and r["verify_per_s"] >= VERIFY_TARGET
    results["targets"] = {
        "append_batched_per_s": APPEND_TARGET,
        "verify_per_s": VERIFY_TARGET,
        "met": ok,
    }
    print(
        f"targets (append >= {APPEND_TARGET:,}/s batched, verify >= {VERIFY_TARGET:,}/s): "
        f"{'met' if ok else 'NOT met'}"
    )
    if "proofs" in results:
        p = results["proofs"]
        print(f"Merkle proofs at {p['events']:,} events (SQLite): inclusion generated "
              f"{p['inclusion_generated_per_s']:,.0f}/s, verified "
              f"{p['inclusion_verified_per_s']:,.0f}/s;"
              f" consistency generated {p['consistency_generated_per_s']:,.0f}/s, verified "
              f"{p['consistency_verified_per_s']:,.0f}/s; first checkpoint "
              f"{p['first_checkpoint_s']:.1f} s")  # fmt: skip
        for name in ("fresh_log", "big_log"):
            r = p[f"checkpoint_per_round_{name}"]
            print(f"checkpoint per round ({name.replace('_', ' ')}, {r['events_per_round']} "
                  f"events): {r['checkpoint_ms']:.1f} ms vs appending the round "
                  f"{r['append_round_ms']:.1f} ms: ratio {r['ratio']:.2f}; "
                  f"{r['share_of_transaction']:.0%} of the round's transaction "
                  f"({r['transaction_ms']:.1f} ms with its commit)")  # fmt: skip
        print_verify_cost(p["verify_with_checkpoints"])
    if backends:
        print(
            f"targets (append >= {APPEND_TARGET:,}/s batched, verify >= {VERIFY_TARGET:,}/s): "
            f"{'met' if ok else 'NOT met'}"
        )
    if "web" in results:
        print_web(results["web"])
        ok &= results["web"]["met"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
