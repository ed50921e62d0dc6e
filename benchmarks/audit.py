"""Audit-log benchmark: append and verification throughput on SQLite and PostgreSQL.

Appends are measured one event per transaction and batched (one transaction per batch,
as a round's events are written, with the head signed per batch). Verification recomputes
the whole chain and checks every signed head from a read-only engine. PostgreSQL runs in
its own throwaway cluster (``fedgate.server.db.pgcluster``) with durable settings
(fsync on). Targets: append >= 5,000 events/s batched, verify >= 100,000 events/s.

    python benchmarks/audit.py [--events 50000] [--batch 500] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedgate.crypto import fingerprint, generate_key
from fedgate.server.audit import AuditLog, verify_database
from fedgate.server.db import open_database, open_readonly
from fedgate.server.db.pgcluster import PgCluster

APPEND_TARGET, VERIFY_TARGET = 5_000, 100_000


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events appended in batches")
    parser.add_argument("--batch", type=int, default=500, help="events per transaction")
    parser.add_argument("--singles", type=int, default=1_000, help="one-event transactions")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

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

    ok = True
    print(
        f"{'backend':<11} {'append/s (1 per txn)':>21} {'append/s (batched)':>19} {'verify/s':>10}"
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
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
