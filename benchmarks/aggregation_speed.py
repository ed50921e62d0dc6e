"""Aggregation speed: every fedgate rule and Flower's built-in equivalents on identical updates.

Protocol (issue 4): ``n = 50`` update vectors of ``d = 1e6`` float32 (one seeded Gaussian
matrix), ``f = 10``. Every rule is timed on that same matrix and reported as a ratio to
``numpy.mean(axis=0)`` of it, measured in the same run. Each timing is the best of
``--repeats`` calls (the machine is shared; the minimum is the least disturbed); the mean is
re-timed around every rule and its overall best is the baseline.

fedgate rules are called directly on the ``(n, d)`` matrix, as the regional strategy calls
them. Flower's are its strategies' own ``aggregate_train`` (``flwr.serverapp.strategy``) on
reply Messages built beforehand (outside the timing) from the same rows, one array each:
FedAvg, FedMedian, FedTrimmedAvg (``beta = (f + 0.5) / n``), Krum, MultiKrum (``n - f``
selected) and Bulyan. Their time includes turning each record back into numpy (Flower's
``Array.numpy()``); the row ``flower / records-to-numpy`` measures that part alone.

The ensemble and Zeno are given a stand-in scorer (an L1 norm, one call per update for Zeno):
the real one evaluates the model on the server's validation data, a cost of the model, not of
aggregation.

A second table times the fedgate rules for ``n`` in {10, 50, 200} x ``d`` in {1e5, 1e6}
(``f = n // 5``; ``n = 200, d = 1e6`` is 800 MB of float32).

    python benchmarks/aggregation_speed.py
    python benchmarks/aggregation_speed.py --json speed.json --no-scaling
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Target ratios to numpy.mean(axis=0) (issue 4) and the Flower strategy each rule replaces.
TARGETS: dict[str, float] = {
    "krum": 2,
    "multi-krum": 5,
    "geomed": 3,
    "cc": 6,
    "median": 10,
    "trimmed-mean": 12,
    "bulyan": 15,
}
FLOWER_EQUIVALENT: dict[str, str] = {
    "mean": "fedavg",
    "median": "fedmedian",
    "trimmed-mean": "fedtrimmedavg",
    "krum": "krum",
    "multi-krum": "multikrum",
    "bulyan": "bulyan",
}


@dataclass(frozen=True)
class Row:
    """One timing: a rule of one implementation on an (n, d) matrix."""

    rule: str
    impl: str
    n: int
    d: int
    f: int
    seconds: float
    ratio_to_mean: float


def make_updates(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``(n, d)`` float32 updates of model-delta size (coordinates of order 1e-2)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= np.float32(0.01)
    return x


def best_time(fn: Callable[[], object], repeats: int, setup: Callable[[], None] | None = None):
    """Smallest wall time of ``repeats`` calls of ``fn`` (``setup`` runs untimed before each)."""
    best = float("inf")
    for _ in range(repeats):
        if setup is not None:
            setup()
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class Baseline:
    """``numpy.mean(x, axis=0)``, re-timed on demand; its best time is the ratio's unit."""

    def __init__(self, x: np.ndarray, repeats: int) -> None:
        self.x, self.repeats, self.best = x, repeats, float("inf")

    def measure(self) -> float:
        self.best = min(self.best, best_time(lambda: np.mean(self.x, axis=0), self.repeats))
        return self.best


def fedgate_rules(f: int) -> list[tuple[str, Callable[[], object]]]:
    """(label, factory) for every fedgate rule, the NNM composition and the region default."""
    from fedgate.strategies.aggregators import AGGREGATORS, make_aggregator
    from fedgate.strategies.rules import REGION_DEFAULT, build_rule

    out = [(name, lambda name=name: make_aggregator(name, f)) for name in AGGREGATORS]
    out.append(("nnm+trimmed-mean", lambda: make_aggregator("trimmed-mean", f, pre="nnm")))
    default = REGION_DEFAULT
    label = f"default: {default.pre + '+' if default.pre else ''}{default.aggregator}"
    out.append((label, lambda: build_rule(default.aggregator, f, default.pre or None)))
    return out


def time_fedgate(x: np.ndarray, f: int, repeats: int, base: Baseline, only=None) -> list[Row]:
    n, d = x.shape
    rng = np.random.default_rng(1)
    reference = (x.mean(0) + 0.01 * rng.standard_normal(d, dtype=np.float32)).astype(np.float32)
    weights = np.full(n, 100.0)
    rows = []
    for label, factory in fedgate_rules(f):
        if only is not None and label not in only:
            continue
        try:
            rule = factory()
            rule.check(n)
        except ValueError as exc:
            print(f"  skip {label} at n={n}, f={f}: {exc}", file=sys.stderr)
            continue

        def setup(rule=rule) -> None:
            if hasattr(rule, "set_reference"):
                rule.set_reference(reference)  # FLTrust: the server's root-data update
            if hasattr(rule, "center"):
                rule.center = reference.copy()  # CC: a previous round's aggregate
            if hasattr(rule, "set_scorer"):  # the ensemble: a stand-in for the server loss,
                rule.set_scorer(
                    lambda delta: float(np.abs(delta).sum())
                )  # whose cost is the model's

        seconds = best_time(lambda rule=rule: rule(x, weights), repeats, setup)
        mean_s = base.measure()
        rows.append(Row(label, "fedgate", n, d, f, seconds, seconds / mean_s))
        print(f"  fedgate {label:<24} {seconds:8.4f} s  {seconds / mean_s:6.2f}x", file=sys.stderr)
    return rows


def time_flower(x: np.ndarray, f: int, repeats: int, base: Baseline) -> list[Row]:
    from _fl_sim import flower_replies, flower_strategy

    n, d = x.shape
    counts = np.full(n, 100)
    rows = []
    holder: dict[str, list] = {}

    def fresh() -> None:  # Flower's FedMedian and Bulyan consume their input records
        holder["replies"] = None
        gc.collect()
        holder["replies"] = flower_replies(x, counts)

    def to_numpy() -> None:
        for msg in holder["replies"]:
            msg.content["arrays"].to_numpy_ndarrays()

    seconds = best_time(to_numpy, repeats, fresh)
    rows.append(Row("records-to-numpy", "flower", n, d, f, seconds, seconds / base.measure()))
    for rule, kind in FLOWER_EQUIVALENT.items():
        strategy = flower_strategy(kind, f, n)
        seconds = best_time(
            lambda s=strategy: s.aggregate_train(1, holder["replies"]), repeats, fresh
        )
        mean_s = base.measure()
        rows.append(Row(rule, "flower", n, d, f, seconds, seconds / mean_s))
        print(f"  flower  {rule:<24} {seconds:8.4f} s  {seconds / mean_s:6.2f}x", file=sys.stderr)
    holder.clear()
    return rows


def main_table(rows: list[Row]):
    from rich.table import Table

    fg = {r.rule: r for r in rows if r.impl == "fedgate"}
    fl = {r.rule: r for r in rows if r.impl == "flower"}
    n, d, f = rows[0].n, rows[0].d, rows[0].f
    table = Table(title=f"Aggregation time, n={n}, d={d:.0e} float32, f={f} (ratio to np.mean)")
    for col in ("rule", "fedgate s", "ratio", "target", "Flower s", "Flower ratio", "speed-up"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    for rule, r in fg.items():
        target = TARGETS.get(rule)
        ok = "" if target is None else (" ok" if r.ratio_to_mean <= target else " MISSED")
        other = fl.get(rule)
        table.add_row(
            rule,
            f"{r.seconds:.4f}",
            f"{r.ratio_to_mean:.2f}",
            "" if target is None else f"<= {target}{ok}",
            "" if other is None else f"{other.seconds:.4f}",
            "" if other is None else f"{other.ratio_to_mean:.2f}",
            "" if other is None else f"{other.seconds / r.seconds:.1f}x",
        )
    if "records-to-numpy" in fl:
        r = fl["records-to-numpy"]
        table.add_row(
            "(Flower records -> numpy)",
            "",
            "",
            "",
            f"{r.seconds:.4f}",
            f"{r.ratio_to_mean:.2f}",
            "",
        )
    return table


def scaling_table(rows: list[Row], means: dict[tuple[int, int], float]):
    from rich.table import Table

    shapes = sorted({(r.n, r.d) for r in rows}, key=lambda s: (s[1], s[0]))
    table = Table(title="fedgate scaling: seconds (ratio to np.mean), f = n // 5")
    table.add_column("rule")
    for n, d in shapes:
        table.add_column(f"n={n} d={d:.0e}", justify="right")
    table.add_row("np.mean", *[f"{means[s]:.4f}" for s in shapes])
    for rule in dict.fromkeys(r.rule for r in rows):
        cells = []
        for n, d in shapes:
            hit = [r for r in rows if (r.rule, r.n, r.d) == (rule, n, d)]
            cells.append(f"{hit[0].seconds:.4f} ({hit[0].ratio_to_mean:.1f})" if hit else "n/a")
        table.add_row(rule, *cells)
    return table


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_report() -> dict:
    """What this run's speed depends on: CPU, BLAS/LAPACK libraries and their threads
    (threadpoolctl), torch's threads and the GEMM kernel picked by measurement."""
    import torch
    from threadpoolctl import threadpool_info

    from fedgate.strategies.aggregators import linalg

    libs = [
        {k: lib.get(k) for k in ("user_api", "internal_api", "num_threads", "version",
                                 "architecture", "filepath")}
        for lib in threadpool_info()
    ]  # fmt: skip
    choice = linalg.gemm_choice()
    timings = {k.split()[0]: float(v) for k, v in choice.items() if k.endswith(" seconds")}
    forced = os.environ.get(linalg.GEMM_ENV, "")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_blas": (torch.backends.mkl.is_available() and "MKL") or "other",
        "threadpools": libs,
        "gemm_seconds": timings,
        "gemm_kernel": choice["kernel"],
        "gemm_forced": forced,
        "workers": linalg.WORKERS,
    }


def print_host(console, host: dict) -> None:
    console.print(
        f"CPU {host['cpu']} ({host['cores']} cores); numpy {host['numpy']}, torch "
        f"{host['torch']} ({host['torch_threads']} threads, {host['torch_blas']}); "
        f"fedgate column workers {host['workers']}"
    )
    for lib in host["threadpools"]:
        console.print(
            f"  {lib['user_api']}: {lib['internal_api']} {lib['version']} "
            f"({lib['architecture']}), {lib['num_threads']} threads: {lib['filepath']}"
        )
    gemm = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in host["gemm_seconds"].items()) or "-"
    how = f"forced by {host['gemm_forced']!r}" if host["gemm_forced"] else "measured"
    console.print(f"  Gram GEMM (50 x 262144 float32): {gemm} -> {host['gemm_kernel']} ({how})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--d", type=float, default=1e6)
    parser.add_argument("--f", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the timing rows to this file")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's strategies")
    parser.add_argument("--no-scaling", action="store_true", help="skip the n x d table")
    parser.add_argument("--rules", help="comma-separated fedgate rule labels (default: all)")
    args = parser.parse_args(argv)
    n, d, f = args.n, int(args.d), args.f
    if n < 1 or d < 1 or f < 0:
        parser.error("need n >= 1, d >= 1 and f >= 0")
    only = set(args.rules.split(",")) if args.rules else None

    from rich.console import Console

    console = Console(width=160)
    t0 = time.perf_counter()
    host = host_report()
    print_host(console, host)
    x = make_updates(n, d)
    base = Baseline(x, args.repeats)
    print(f"np.mean(axis=0) of ({n}, {d}) float32: {base.measure():.4f} s", file=sys.stderr)
    rows = time_fedgate(x, f, args.repeats, base, only)
    if not args.no_flower:
        rows += time_flower(x, f, max(2, args.repeats // 2), base)
    # every ratio against the best mean seen in the whole run
    rows = [Row(r.rule, r.impl, r.n, r.d, r.f, r.seconds, r.seconds / base.best) for r in rows]
    del x
    console.print(main_table(rows))
    console.print(f"np.mean baseline: {base.best:.4f} s (best of all its timings)")

    scaling: list[Row] = []
    if not args.no_scaling:
        means = {}
        for dd in (100_000, 1_000_000):
            for nn in (10, 50, 200):
                xs = make_updates(nn, dd, seed=2)
                b = Baseline(xs, 3)
                b.measure()
                part = time_fedgate(xs, nn // 5, 3, b, only)
                means[(nn, dd)] = b.best
                scaling += [
                    Row(r.rule, r.impl, r.n, r.d, r.f, r.seconds, r.seconds / b.best) for r in part
                ]
                del xs
                gc.collect()
        console.print(scaling_table(scaling, means))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    console.print(
        f"total {time.perf_counter() - t0:.0f} s on {os.cpu_count()} cores; load average at "
        f"the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)"
    )
    if args.json:
        payload = [r.__dict__ for r in rows + scaling]
        args.json.write_text(json.dumps({"host": host, "rows": payload}, indent=1))
        console.print(f"wrote {len(payload)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
