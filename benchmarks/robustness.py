"""Robustness benchmark: every fedgate rule and Flower's built-ins under every attack profile.

Protocol (issue 4): scikit-learn digits, MLP 64-32-10, n = 20 clients, 100 rounds of full
participation. The data are laid out like a region (``fedgate.models.data``): a common 20 %
test split measures the reported accuracy; the server keeps a 15 % validation split of the rest
(its own data: FLTrust's root data and the ensemble's scorer); the clients share the remaining
pool by Dirichlet(alpha). Clients train exactly like the ClientApp's "phone" profile
(``_fl_sim.BatchedTrainer`` = ``fedgate.models.train.train_local``). ``f`` clients (a seeded
choice) run each attack of :mod:`fedgate.clients.sim.attacks`, colluding (they see the round's
honest updates; ``--agnostic``: they only know their own). Every (rule, impl) of a cell is its
own trajectory on identical data, Byzantine ids, attack randomness and seeds. fedgate rules
are built with ``fedgate.strategies.rules.build_rule`` (region defaults included); Flower's
are its strategies' own ``aggregate_train`` on reply Messages (FedTrimmedAvg with
``beta = (f + 0.5) / n``, MultiKrum selecting ``n - f``). A run *diverges* when its weights
are not finite or its accuracy is below 0.2; it then counts as 0 in the worst case.

    python benchmarks/robustness.py --quick
    python benchmarks/robustness.py --json benchmarks/results/robustness.json \\
        --text benchmarks/results/robustness.txt                       # full grid
    python benchmarks/robustness.py --rules ensemble,cc --fs 4 --seeds 0,1,2

Rows written with ``--json``: {alpha, f, attack, rule, impl, seed, accuracy} (+ diverged,
client_momentum, backdoor_asr for the three backdoor forms, attack_free_asr per trigger for
the attack-free run (the floor: triggered inputs its model sends to the target without any
attacker), error when a run failed).
Every figure is the **worst over seeds**; backdoor success is the fraction of the common
test split's non-target images, carrying the form's trigger (corner patch; mirrored for the
edge case), that the final model classifies as the target. ``--plot FILE`` draws the
frontier (worst-case accuracy against backdoor success, per setting).
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
from collections import defaultdict  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fl_sim import FLOWER_KINDS, FLOWER_RULES, RuleSpec, Setting, fedgate_step, run_group  # noqa: E402

from fedgate.clients.sim.attacks import ATTACKS  # noqa: E402

ALL_ATTACKS = list(ATTACKS)  # "none" first
QUICK_ATTACKS = [
    "none",
    "sign-flip",
    "ipm-100",
    "backdoor",
    "backdoor-bounded",
    "backdoor-edge",
    "alie-adaptive",
]
QUICK_RULES = ["ensemble-nofilter", "cc", "nnm+cc", "multi-krum"]
# the region default's robust member, the default without its backdoor filter, and FLAME in
# front of single rules: the candidate defences of the frontier, in the full grid too
EXTRA_RULES = ["nnm+cc", "ensemble-nofilter", "flame+cc", "flame+mean"]


def _repair(**params) -> tuple[str, None, dict]:
    """The region default (trigger repair + FoolsGold) with these ``TriggerRepair`` parameters."""
    return ("ensemble", None, {"filter": "trigger-repair+foolsgold", "repair": params})


VARIANTS: dict[str, tuple[str, str | None, dict]] = {
    "ensemble-nofilter": ("ensemble", None, {"filter": ""}),
    "ensemble-noise": ("ensemble", None, {"noise": 0.001}),
    "ensemble-foolsgold": ("ensemble", None, {"filter": "foolsgold"}),
    "ensemble-foolsgold-paper": (
        "ensemble",
        None,
        {"filter": "foolsgold", "sybil_similarity": 0.0},
    ),
    "ensemble-foolsgold-clip": ("ensemble", None, {"filter": "foolsgold", "clip": True}),
    "ensemble-scan": ("ensemble", None, {"filter": "trigger-scan+foolsgold"}),
    "ensemble-repair": ("ensemble", None, {"filter": "trigger-repair+foolsgold"}),
    "ensemble-repair-only": ("ensemble", None, {"filter": "trigger-repair"}),
    # the default until 3 December, late: unlearn only what the round found
    "ensemble-repair-found-only": _repair(unlearn_for=0),
    # remembered triggers drop devices only for so many rounds after last found (0: never)
    "ensemble-repair-attr-0": _repair(attribute_for=0),
    "ensemble-repair-attr-5": _repair(attribute_for=5),
    "ensemble-repair-attr-15": _repair(attribute_for=15),
    # ... except a class found in two (three) rounds: for ever
    "ensemble-repair-attr-5-2": _repair(attribute_for=5, persistent_after=2),
    "ensemble-repair-attr-5-3": _repair(attribute_for=5, persistent_after=3),
    # the repair's tuning runs (docs/backdoor.md, "The trigger repair")
    "ensemble-repair-30": _repair(unlearn_steps=30, unlearn_for=0),
    "ensemble-repair-100": _repair(unlearn_steps=100, unlearn_for=0),
    "ensemble-repair-lr02": _repair(unlearn_lr=0.02, unlearn_for=0),
    "ensemble-repair-k3": _repair(remembered=3, unlearn_for=0),
    "ensemble-repair-own": _repair(unlearn_to="own", unlearn_for=0),
    "ensemble-repair-keep": _repair(unlearn_to="own", unlearn_for=1000),
    "ensemble-repair-keep-labels": _repair(unlearn_for=1000),
    "ensemble-repair-keep-labels-5": _repair(unlearn_for=5),
    "ensemble-repair-keep-labels-15": _repair(unlearn_for=15),
    "ensemble-repair-keep-fast": _repair(
        unlearn_to="own", unlearn_for=1000, search_examples=128, search_steps=50
    ),
    "ensemble-scan-2.5": (
        "ensemble",
        None,
        {"filter": "trigger-scan+foolsgold", "scan_threshold": 2.5},
    ),
    "ensemble-scan-5": (
        "ensemble",
        None,
        {"filter": "trigger-scan+foolsgold", "scan_threshold": 5.0},
    ),
}
"""Labels for rules built with parameters other than the region defaults: (rule, pre, params)."""
TARGETS = {(0.5, 4): 0.93, (0.5, 6): 0.92, (0.1, 4): 0.88, (0.1, 6): 0.80}
"""Worst case (over attacks and seeds) the region default must reach (issue 19)."""
BACKDOOR_TARGET_ASR = 0.05
"""The region default's backdoor success must stay at or below this for every form."""


def default_label() -> str:
    """The region default's label in the tables (``pre+aggregator``)."""
    from fedgate.strategies.rules import REGION_DEFAULT

    d = REGION_DEFAULT
    return f"{d.pre}+{d.aggregator}" if d.pre else d.aggregator


def fedgate_specs(names: list[str] | None = None, nnm: bool = False) -> list[RuleSpec]:
    """Every registered fedgate rule (``nnm+rule`` too with ``nnm``) and the region default;
    ``names`` keeps only those labels."""
    from fedgate.strategies.aggregators import AGGREGATORS

    labels = list(AGGREGATORS) + EXTRA_RULES
    if nnm:
        labels += [f"nnm+{n}" for n in AGGREGATORS if n not in ("mean", "ensemble", "cc")]
    if default_label() not in labels:
        labels.append(default_label())
    if names is not None:
        from fedgate.strategies.aggregators import PRE_AGGREGATORS

        composed = {f"{p}+{n}" for p in PRE_AGGREGATORS for n in AGGREGATORS}
        unknown = sorted(set(names) - set(labels) - composed - set(VARIANTS))
        if unknown:
            raise SystemExit(f"unknown fedgate rule(s) {unknown}; known: {', '.join(labels)}")
        labels = [n for n in dict.fromkeys(names)]
    specs = []
    for label in labels:
        name, pre, params = parse_label(label)
        specs.append(RuleSpec(label, "fedgate", fedgate_step(name, pre, **params)))
    return specs


def parse_label(label: str) -> tuple[str, str | None, dict]:
    """A table label as (rule, pre-aggregator, parameters): ``nnm+cc``, or a variant."""
    if label in VARIANTS:
        name, pre, params = VARIANTS[label]
        return name, pre, dict(params)
    pre, _, name = label.rpartition("+")
    return name, pre or None, {}


def runnable(label: str, setting: Setting) -> bool:
    """Whether the fedgate rule's preconditions hold for the setting (Bulyan: n >= 4f + 3);
    rules that cannot run are left out of the tables ("n/a") rather than counted as 0."""
    from fedgate.strategies.aggregators import AggregatorConfigError
    from fedgate.strategies.rules import build_rule

    name, pre, params = parse_label(label)
    try:
        build_rule(name, setting.f, pre, **params).check(setting.n)
    except AggregatorConfigError:
        return False
    return True


def flower_specs(names: list[str] | None = None) -> list[RuleSpec]:
    if names is not None:
        unknown = sorted(set(names) - set(FLOWER_KINDS))
        if unknown:
            raise SystemExit(f"unknown Flower rule(s) {unknown}; known: {', '.join(FLOWER_KINDS)}")
    return [s for k, s in FLOWER_RULES.items() if names is None or k in names]


def _group(args: tuple) -> tuple[list[dict], float]:
    setting, attack, rule_names, flower_names, nnm = args
    specs = [s for s in fedgate_specs(rule_names, nnm) if runnable(s.rule, setting)]
    specs += [s for s in flower_specs(flower_names) if setting.n >= s.min_n(setting.f)]
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
        if r.attack_free_asr is not None:
            row["attack_free_asr"] = {t: round(v, 4) for t, v in r.attack_free_asr.items()}
        if r.error:
            row["error"] = r.error
        rows.append(row)
    return rows, time.perf_counter() - t0


def run_grid(
    alphas,
    fs,
    attacks,
    seeds,
    rounds,
    rule_names=None,
    flower_names=None,
    *,
    client_momentum=0.0,
    colluding=True,
    workers=2,
    nnm=False,
) -> list[dict]:
    """Every (alpha, f, seed, attack) group, ``workers`` at a time; progress on stderr."""
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
        jobs.append((setting, attack, rule_names, flower_names, nnm))
    rows: list[dict] = []

    def report(job, dt):
        s, attack = job[0], job[1]
        print(
            f"  alpha={s.alpha} f={s.f} seed={s.seed} {attack:<11} {dt:6.1f}s",
            file=sys.stderr,
            flush=True,
        )

    if workers <= 1:
        for job in jobs:
            part, dt = _group(job)
            rows += part
            report(job, dt)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_group, job): job for job in jobs}
            for fut in as_completed(futures):
                part, dt = fut.result()
                rows += part
                report(futures[fut], dt)
    order = {a: i for i, a in enumerate(ALL_ATTACKS)}
    rows.sort(
        key=lambda r: (-r["alpha"], r["f"], r["seed"], order[r["attack"]], r["impl"], r["rule"])
    )
    return rows


def _score(row: dict) -> float:
    acc = row["accuracy"]
    return 0.0 if acc is None or row["diverged"] else float(acc)


def cells(rows: list[dict]) -> dict[tuple, float]:
    """(impl, rule, alpha, f, attack) -> the worst accuracy over seeds (diverged = 0)."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        acc[(r["impl"], r["rule"], r["alpha"], r["f"], r["attack"])].append(_score(r))
    return {k: min(v) for k, v in acc.items()}


def backdoor_cells(rows: list[dict]) -> dict[tuple, tuple[float, str]]:
    """(impl, rule, alpha, f) -> (highest backdoor success over forms and seeds, its form)."""
    out: dict[tuple, tuple[float, str]] = {}
    for r in rows:
        if r.get("backdoor_asr") is None:
            continue
        key = (r["impl"], r["rule"], r["alpha"], r["f"])
        asr = 1.0 if r["diverged"] else float(r["backdoor_asr"])
        if key not in out or asr > out[key][0]:
            out[key] = (asr, r["attack"])
    return out


def attack_free_floors(rows: list[dict]) -> dict[tuple, dict[str, float]]:
    """(impl, rule, alpha, f) -> per trigger, the highest share over seeds of triggered test
    inputs that the attack-free model sends to the target class: the floor a backdoor
    defence is measured against (a mirrored digit can look like the target without any
    attacker)."""
    out: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        for trigger, v in (r.get("attack_free_asr") or {}).items():
            key = (r["impl"], r["rule"], r["alpha"], r["f"])
            out[key][trigger] = max(v, out[key].get(trigger, 0.0))
    return dict(out)


def summarize(rows: list[dict]) -> dict[tuple, tuple[float, str, float | None]]:
    """(impl, rule, alpha, f) -> (worst accuracy over attacks, worst attack, clean accuracy)."""
    per: dict[tuple, dict[str, float]] = defaultdict(dict)
    for (impl, rule, alpha, f, attack), v in cells(rows).items():
        per[(impl, rule, alpha, f)][attack] = v
    out = {}
    for key, attacks in per.items():
        worst = min(attacks, key=attacks.get)
        out[key] = (attacks[worst], worst, attacks.get("none"))
    return out


def _settings(rows: list[dict]) -> list[tuple[float, int]]:
    return sorted({(r["alpha"], r["f"]) for r in rows}, key=lambda s: (-s[0], s[1]))


def _setting_table(title: str, rows: list[dict], keys, cell):
    """One row per (impl, rule) in ``keys`` (the region default first), one column per
    setting; ``cell(impl, rule, alpha, f)`` is the text of a cell (``None``: n/a)."""
    from rich.table import Table

    default = default_label()
    table = Table(title=title)
    table.add_column("impl")
    table.add_column("rule")
    for alpha, f in _settings(rows):
        table.add_column(f"alpha={alpha} f={f}", justify="right")
    for impl, rule in sorted(keys, key=lambda k: (k[0], k[1] != default, k[1])):
        out = [cell(impl, rule, alpha, f) or "n/a" for alpha, f in _settings(rows)]
        label = f"{rule} (region default)" if (impl, rule) == ("fedgate", default) else rule
        table.add_row(impl, label, *out)
    return table


def worst_case_table(rows: list[dict]):
    """Per (impl, rule): worst accuracy over attacks (and its attack) and clean accuracy."""
    summary = summarize(rows)
    seeds = sorted({r["seed"] for r in rows})

    def cell(impl, rule, alpha, f):
        hit = summary.get((impl, rule, alpha, f))
        if hit is None:
            return None
        worst, attack, clean = hit
        return f"{worst:.3f} {attack} ({'-' if clean is None else f'{clean:.3f}'})"

    return _setting_table(
        "Final test accuracy: worst case over attacks and seeds, the worst attack, "
        f"(clean accuracy, worst seed); seeds {seeds}",
        rows,
        {(k[0], k[1]) for k in summary},
        cell,
    )


def per_attack_table(rows: list[dict], alpha: float, f: int):
    from rich.table import Table

    c = cells(rows)
    attacks = [a for a in ALL_ATTACKS if any(r["attack"] == a for r in rows)]
    keys = sorted({(k[0], k[1]) for k in c if k[2:4] == (alpha, f)})
    table = Table(title=f"Accuracy per attack, alpha={alpha}, f={f}, worst seed (0 = diverged)")
    table.add_column("impl")
    table.add_column("rule")
    for a in attacks:
        table.add_column(a, justify="right")
    for impl, rule in keys:
        vals = [c.get((impl, rule, alpha, f, a)) for a in attacks]
        table.add_row(impl, rule, *["-" if v is None else f"{v:.3f}" for v in vals])
    return table


def backdoor_table(rows: list[dict]):
    """Per (impl, rule): highest backdoor success over the forms and seeds (and the form),
    beside the worst-case and clean accuracy: the frontier's two axes."""
    bd, summary = backdoor_cells(rows), summarize(rows)

    def cell(impl, rule, alpha, f):
        hit, acc = bd.get((impl, rule, alpha, f)), summary.get((impl, rule, alpha, f))
        if hit is None or acc is None:
            return None
        clean = "-" if acc[2] is None else f"{acc[2]:.3f}"
        return f"{hit[0]:.3f} {hit[1]} | {acc[0]:.3f} | {clean}"

    return _setting_table(
        "Backdoor success (triggered non-target test images classified as the target; "
        "highest over forms and seeds) | worst-case accuracy | clean accuracy",
        rows,
        {(k[0], k[1]) for k in bd},
        cell,
    )


def frontier(rows: list[dict]) -> list[dict]:
    """Per (alpha, f) and candidate defence: highest backdoor success and worst-case accuracy,
    and whether the candidate is on the Pareto front (no other is better on both)."""
    bd, summary = backdoor_cells(rows), summarize(rows)
    points = []
    for (impl, rule, alpha, f), (asr, form) in bd.items():
        acc = summary.get((impl, rule, alpha, f))
        if acc is None:
            continue
        points.append(
            {"alpha": alpha, "f": f, "impl": impl, "rule": rule, "backdoor": asr,
             "form": form, "worst": acc[0], "worst_attack": acc[1], "clean": acc[2]}
        )  # fmt: skip
    for p in points:
        p["pareto"] = not any(
            q is not p
            and (q["alpha"], q["f"]) == (p["alpha"], p["f"])
            and q["backdoor"] <= p["backdoor"]
            and q["worst"] >= p["worst"]
            and (q["backdoor"] < p["backdoor"] or q["worst"] > p["worst"])
            for q in points
        )
    return points


def plot_frontier(points: list[dict], path: Path) -> None:
    """Worst-case accuracy against backdoor success, one panel per setting, the Pareto
    front joined and the region default marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(p["alpha"], p["f"]) for p in points}, key=lambda s: (-s[0], s[1]))
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4.5), squeeze=False)
    default = default_label()
    for ax, (alpha, f) in zip(axes[0], settings, strict=True):
        here = [p for p in points if (p["alpha"], p["f"]) == (alpha, f)]
        for p in here:
            mine = (p["impl"], p["rule"]) == ("fedgate", default)
            ax.scatter(p["backdoor"], p["worst"], marker="*" if mine else "o",
                       s=160 if mine else 30, c="tab:red" if mine else
                       ("tab:blue" if p["impl"] == "fedgate" else "tab:gray"))  # fmt: skip
            ax.annotate(f"{p['impl'][0]}:{p['rule']}", (p["backdoor"], p["worst"]), fontsize=6)
        front = sorted((p for p in here if p["pareto"]), key=lambda p: p["backdoor"])
        ax.plot([p["backdoor"] for p in front], [p["worst"] for p in front], "k--", lw=0.8)
        target = TARGETS.get((alpha, f))
        if target is not None:
            ax.axhline(target, color="tab:green", lw=0.8)
        ax.axvline(BACKDOOR_TARGET_ASR, color="tab:green", lw=0.8)
        ax.set_title(f"alpha={alpha} f={f}")
        ax.set_xlabel("backdoor success (highest over forms, seeds)")
        ax.set_ylabel("worst-case accuracy (over attacks, seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def verdict_lines(rows: list[dict]) -> list[str]:
    """Per setting: the region default against each Flower built-in, clean vs FedAvg, targets."""
    summary = summarize(rows)
    default = default_label()
    lines = []
    for alpha, f in _settings(rows):
        mine = summary.get(("fedgate", default, alpha, f))
        if mine is None:
            continue
        worst, attack, clean = mine
        line = [f"alpha={alpha} f={f}: default {default} worst {worst:.3f} ({attack})"]
        target = TARGETS.get((alpha, f))
        if target is not None:
            line.append(f"target >= {target}: {'met' if worst >= target else 'MISSED'}")
        fedavg = summary.get(("flower", "fedavg", alpha, f))
        if clean is not None and fedavg is not None and fedavg[2] is not None:
            gap = clean - fedavg[2]
            ok = "within 1 point" if gap >= -0.01 else "MORE than 1 point below"
            line.append(f"clean {clean:.3f} vs FedAvg {fedavg[2]:.3f} ({gap:+.3f}, {ok})")
        lines.append("; ".join(line))
        for kind in FLOWER_KINDS:
            other = summary.get(("flower", kind, alpha, f))
            if other is None:
                lines.append(f"    vs Flower {kind:<14} n/a (precondition not met)")
                continue
            better = "better" if worst > other[0] else "NOT better"
            lines.append(
                f"    vs Flower {kind:<14} {other[0]:.3f} ({other[1]}): {better} "
                f"by {worst - other[0]:+.3f}"
            )
    bd = backdoor_cells(rows)
    floors = attack_free_floors(rows)
    for alpha, f in _settings(rows):
        hit = bd.get(("fedgate", default, alpha, f))
        if hit is not None:
            ok = "met" if hit[0] <= BACKDOOR_TARGET_ASR else "MISSED"
            floor = floors.get(("fedgate", default, alpha, f))
            lines.append(
                f"alpha={alpha} f={f}: default backdoor success {hit[0]:.3f} ({hit[1]}; "
                f"highest over forms and seeds), target <= {BACKDOOR_TARGET_ASR}: {ok}"
                + (
                    "; without an attacker (highest over seeds): "
                    + ", ".join(f"{t} {v:.3f}" for t, v in floor.items())
                    if floor
                    else ""
                )
            )
    diverged = [r for r in rows if r["diverged"] and (r["impl"], r["rule"]) == ("fedgate", default)]
    lines.append(
        f"default runs diverged (NaN or accuracy < 0.2): {len(diverged)}"
        + "".join(f"\n    {r['alpha']} {r['f']} {r['attack']} seed {r['seed']}" for r in diverged)
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset in under 3 minutes")
    parser.add_argument("--json", type=Path, help="write the result rows to this file")
    parser.add_argument("--text", type=Path, help="also save the printed tables to this file")
    parser.add_argument("--alphas", default="0.5,0.1")
    parser.add_argument("--fs", default="4,6")
    parser.add_argument("--attacks", default=",".join(ALL_ATTACKS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--rules", help="comma-separated fedgate rules (default: all)")
    parser.add_argument("--flower", help="comma-separated Flower rules (default: all; '' none)")
    parser.add_argument("--nnm", action="store_true", help="also run nnm+<rule> for every rule")
    parser.add_argument("--client-momentum", type=float, default=0.0)
    parser.add_argument("--agnostic", action="store_true", help="non-colluding attackers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--plot", type=Path, help="save the backdoor/accuracy frontier plot (+ its points, .json)"
    )
    parser.add_argument(
        "--load",
        help="comma-separated result files (--json) to report on instead of running",
    )
    args = parser.parse_args(argv)

    try:
        alphas = [float(a) for a in args.alphas.split(",")]
        fs = [int(f) for f in args.fs.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as exc:
        parser.error(f"--alphas, --fs and --seeds take comma-separated numbers ({exc})")
    attacks = args.attacks.split(",")
    rules = args.rules.split(",") if args.rules else None
    flower = None if args.flower is None else [k for k in args.flower.split(",") if k]
    if args.quick:
        alphas, fs, attacks, seeds = [0.5], [4], QUICK_ATTACKS, [0]
        rules = rules or [default_label(), *QUICK_RULES]
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attack(s) {sorted(unknown)}; known: {', '.join(ATTACKS)}")
    if args.rounds < 1 or args.workers < 1 or not all(a > 0 for a in alphas):
        parser.error("need rounds >= 1, workers >= 1 and alphas > 0")
    if not 0 <= args.client_momentum < 1:
        parser.error("--client-momentum must be in [0, 1)")

    t0 = time.perf_counter()
    if args.load:
        rows = []
        for name in args.load.split(","):
            try:
                rows += json.loads(Path(name).read_text())
            except (OSError, ValueError) as exc:
                parser.error(f"--load {name}: {exc}")
    else:
        rows = run_grid(
            alphas,
            fs,
            attacks,
            seeds,
            args.rounds,
            rules,
            flower,
            client_momentum=args.client_momentum,
            colluding=not args.agnostic,
            workers=args.workers,
            nnm=args.nnm,
        )
    elapsed = time.perf_counter() - t0

    from rich.console import Console

    console = Console(width=220, record=True)
    console.print(worst_case_table(rows))
    for alpha, f in _settings(rows):
        console.print(per_attack_table(rows, alpha, f))
    if any(r.get("backdoor_asr") is not None for r in rows):
        console.print(backdoor_table(rows))
        if args.plot:
            points = frontier(rows)
            plot_frontier(points, args.plot)
            args.plot.with_suffix(".json").write_text(json.dumps(points, indent=1))
            console.print(f"frontier plot: {args.plot}", highlight=False)
    for line in verdict_lines(rows):
        console.print(line, highlight=False, markup=False)
    errors = [r for r in rows if r.get("error")]
    for r in errors[:20]:
        console.print(
            f"error {r['impl']}/{r['rule']} {r['attack']}: {r['error']}",
            highlight=False,
            markup=False,
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    console.print(
        f"{len(rows)} runs in {elapsed:.0f} s with {args.workers} worker(s) "
        f"(1-min load average at the end: {load:.1f} on {os.cpu_count()} cores); "
        f"{len(errors)} failed",
        highlight=False,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
        console.print(f"wrote {len(rows)} rows to {args.json}", highlight=False)
    if args.text:
        args.text.parent.mkdir(parents=True, exist_ok=True)
        args.text.write_text(console.export_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
