"""Robustness benchmark: every fedgate rule and Flower's built-ins under every attack profile.

Protocol (issue 4): scikit-learn digits (the common 20 % test split), MLP 64-32-10, n = 20
clients on Dirichlet(alpha) shards of the rest, f Byzantine clients (a seeded choice), 100
rounds of full participation; each client trains like the ClientApp's "pi" profile (1 epoch,
batch 32, at most 200 examples, SGD lr 0.1 momentum 0.9; see ``_fl_sim.BatchedTrainer``).
Attacks come from :mod:`fedgate.clients.attacks` (colluding: the attackers see the round's
honest updates; ``--agnostic`` for the non-colluding form). Every (rule, impl) is its own
trajectory with the identical data, Byzantine ids, attack and seeds; fedgate rules come from
``fedgate.strategies.aggregators.AGGREGATORS`` (plus ``nnm+`` compositions when the NNM
pre-aggregator is registered), Flower's are its own strategies' ``aggregate_train``
(FedTrimmedAvg with ``beta = (f + 0.5) / n``; MultiKrum selecting ``n - f``).

    python benchmarks/robustness.py --quick
    python benchmarks/robustness.py --json results.json          # full grid
    python benchmarks/robustness.py --client-momentum 0.9 --rules cc,nnm+cc,trimmed-mean

Rows written with ``--json``: {alpha, f, attack, rule, impl, seed, accuracy} (+ backdoor_asr,
diverged, client_momentum, error where relevant).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread per worker process: 2 shared cores

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fl_sim import (  # noqa: E402
    FLOWER_RULES,
    RuleSpec,
    Setting,
    fedgate_step,
    run_group,
)

from fedgate.clients.attacks import ATTACKS  # noqa: E402

ALL_ATTACKS = list(ATTACKS)  # "none" first
QUICK_ATTACKS = ["none", "sign-flip", "alie", "ipm-100", "min-max", "label-flip"]

# Parameters some rules need beyond ``f`` (keyed by registry name).
RULE_PARAMS: dict[str, dict] = {}


def fedgate_specs(names: list[str] | None = None, nnm: bool = True) -> list[RuleSpec]:
    """One spec per registered fedgate rule, and ``nnm+rule`` when NNM is registered."""
    from fedgate.strategies.aggregators import AGGREGATORS, PRE_AGGREGATORS

    specs = []
    for name in AGGREGATORS:
        params = RULE_PARAMS.get(name, {})
        specs.append(RuleSpec(name, "fedgate", fedgate_step(name, **params)))
        if nnm and "nnm" in PRE_AGGREGATORS and name != "mean":
            specs.append(RuleSpec(f"nnm+{name}", "fedgate", fedgate_step(name, "nnm", **params)))
    if names is not None:
        specs = [s for s in specs if s.rule in names]
    return specs


def flower_specs(names: list[str] | None = None) -> list[RuleSpec]:
    return [s for k, s in FLOWER_RULES.items() if names is None or k in names]


def _group(args: tuple) -> list[dict]:
    setting, attack, rule_names, flower_names = args
    specs = fedgate_specs(rule_names) + flower_specs(flower_names)
    specs = [s for s in specs if setting.n >= s.min_n(setting.f)]
    t0 = time.perf_counter()
    results = run_group(setting, attack, specs)
    rows = []
    for r in results:
        row = {
            "alpha": setting.alpha,
            "f": setting.f,
            "attack": attack,
            "rule": r.rule,
            "impl": r.impl,
            "seed": setting.seed,
            "accuracy": None if math.isnan(r.accuracy) else round(r.accuracy, 4),
            "diverged": r.diverged or bool(r.error),
            "client_momentum": setting.client_momentum,
        }
        if r.backdoor_asr is not None:
            row["backdoor_asr"] = round(r.backdoor_asr, 4)
        if r.error:
            row["error"] = r.error
        rows.append(row)
    print(
        f"  alpha={setting.alpha} f={setting.f} seed={setting.seed} {attack:<11} "
        f"{len(specs)} runs  {time.perf_counter() - t0:5.1f}s",
        file=sys.stderr,
        flush=True,
    )
    return rows


def run_grid(
    alphas,
    fs,
    attacks,
    seeds,
    rounds,
    rule_names=None,
    flower_names=None,
    client_momentum=0.0,
    colluding=True,
    workers=2,
) -> list[dict]:
    jobs = []
    for alpha, f, seed, attack in itertools.product(alphas, fs, seeds, attacks):
        setting = Setting(
            alpha=alpha,
            f=f,
            rounds=rounds,
            seed=seed,
            client_momentum=client_momentum,
            colluding=colluding,
        )
        jobs.append((setting, attack, rule_names, flower_names))
    # Longest first: the groups are similar, so plain order balances well enough.
    if workers <= 1:
        chunks = [_group(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chunks = list(pool.map(_group, jobs))
    return [row for chunk in chunks for row in chunk]


def worst_case_table(rows: list[dict]):
    """Per (impl, rule): worst accuracy over attacks (mean over seeds) for each (alpha, f)."""
    from rich.table import Table

    settings = sorted({(r["alpha"], r["f"]) for r in rows}, key=lambda s: (-s[0], s[1]))
    keys = sorted({(r["impl"], r["rule"]) for r in rows})
    cell: dict = {}
    for r in rows:
        acc = r["accuracy"] if r["accuracy"] is not None and not r["diverged"] else 0.0
        cell.setdefault((r["impl"], r["rule"], r["alpha"], r["f"], r["attack"]), []).append(acc)
    table = Table(title="Final test accuracy: worst case over attacks (clean accuracy)")
    table.add_column("impl")
    table.add_column("rule")
    for alpha, f in settings:
        table.add_column(f"a={alpha} f={f}", justify="right")
    summary = {}
    for impl, rule in keys:
        out = []
        for alpha, f in settings:
            per_attack = {
                atk: sum(v) / len(v)
                for (i, ru, al, ff, atk), v in cell.items()
                if (i, ru, al, ff) == (impl, rule, alpha, f)
            }
            if not per_attack:
                out.append("n/a")
                continue
            worst_attack = min(per_attack, key=per_attack.get)
            clean = per_attack.get("none")
            summary[(impl, rule, alpha, f)] = (per_attack[worst_attack], worst_attack, clean)
            text = f"{per_attack[worst_attack]:.3f} {worst_attack}"
            if clean is not None:
                text += f" ({clean:.3f})"
            out.append(text)
        table.add_row(impl, rule, *out)
    return table, summary


def per_attack_table(rows: list[dict], alpha: float, f: int):
    from rich.table import Table

    attacks = [a for a in ALL_ATTACKS if any(r["attack"] == a for r in rows)]
    keys = sorted({(r["impl"], r["rule"]) for r in rows if r["alpha"] == alpha and r["f"] == f})
    table = Table(title=f"Accuracy per attack, alpha={alpha}, f={f} (mean over seeds)")
    table.add_column("impl")
    table.add_column("rule")
    for a in attacks:
        table.add_column(a, justify="right")
    for impl, rule in keys:
        vals = []
        for a in attacks:
            accs = [
                (r["accuracy"] or 0.0) if not r["diverged"] else 0.0
                for r in rows
                if (r["impl"], r["rule"], r["alpha"], r["f"], r["attack"])
                == (impl, rule, alpha, f, a)
            ]
            vals.append(f"{sum(accs) / len(accs):.3f}" if accs else "-")
        table.add_row(impl, rule, *vals)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset in under 3 minutes")
    parser.add_argument("--json", type=Path, help="write the result rows to this file")
    parser.add_argument("--alphas", default="0.5,0.1")
    parser.add_argument("--fs", default="4,6")
    parser.add_argument("--attacks", default=",".join(ALL_ATTACKS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--rules", help="comma-separated fedgate rules (default: all)")
    parser.add_argument("--flower", help="comma-separated Flower rules (default: all)")
    parser.add_argument("--client-momentum", type=float, default=0.0)
    parser.add_argument("--agnostic", action="store_true", help="non-colluding attackers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-attack", action="store_true", help="also print per-attack tables")
    args = parser.parse_args(argv)

    alphas = [float(a) for a in args.alphas.split(",")]
    fs = [int(f) for f in args.fs.split(",")]
    attacks = args.attacks.split(",")
    if args.quick:
        alphas, fs, attacks = [0.5], [4], QUICK_ATTACKS
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attack(s) {sorted(unknown)}; known: {', '.join(ATTACKS)}")
    rules = args.rules.split(",") if args.rules else None
    flower = args.flower.split(",") if args.flower is not None else None
    if flower == [""]:
        flower = []

    t0 = time.perf_counter()
    rows = run_grid(
        alphas,
        fs,
        attacks,
        [int(s) for s in args.seeds.split(",")],
        args.rounds,
        rules,
        flower,
        args.client_momentum,
        not args.agnostic,
        args.workers,
    )
    elapsed = time.perf_counter() - t0

    from rich.console import Console

    console = Console()
    table, summary = worst_case_table(rows)
    console.print(table)
    if args.per_attack:
        for alpha, f in sorted({(r["alpha"], r["f"]) for r in rows}, key=lambda s: (-s[0], s[1])):
            console.print(per_attack_table(rows, alpha, f))
    for alpha, f in sorted({(k[2], k[3]) for k in summary}, key=lambda s: (-s[0], s[1])):
        fg = {k: v for k, v in summary.items() if k[0] == "fedgate" and k[2:] == (alpha, f)}
        fl = {k: v for k, v in summary.items() if k[0] == "flower" and k[2:] == (alpha, f)}
        if fg:
            best = max(fg, key=lambda k: fg[k][0])
            line = f"a={alpha} f={f}: best fedgate {best[1]} worst-case {fg[best][0]:.3f}"
            if fl:
                bfl = max(fl, key=lambda k: fl[k][0])
                line += f"; best Flower {bfl[1]} {fl[bfl][0]:.3f}"
            console.print(line)
    errors = [r for r in rows if r.get("error")]
    for r in errors[:20]:
        console.print(f"[red]error[/red] {r['impl']}/{r['rule']} {r['attack']}: {r['error']}")
    diverged = [r for r in rows if r["diverged"] and not r.get("error")]
    console.print(
        f"{len(rows)} runs in {elapsed:.0f} s; {len(diverged)} diverged (NaN or acc < 0.2), "
        f"{len(errors)} failed"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
        console.print(f"wrote {len(rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
