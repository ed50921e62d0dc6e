"""Is there a Sybil signal? Per round, how alike the attackers' updates are, against honest ones.

FoolsGold (``strategies/aggregators/foolsgold.py``) assumes colluding attackers send updates
more alike than honest clients do. This runs one cell of the robustness protocol
(``_fl_sim``: digits, n = 20, the region default's trajectory unless ``--rule`` says
otherwise) and, every ``--every`` rounds, prints for honest clients and attackers the
min / median / max over clients of their highest cosine similarity to any other client,
on the four features the filter can use (this round's update, its median residual, and
both summed over the rounds so far), then the FoolsGold weights of the attackers (paper
form, ``min_similarity = 0``, on the history features). ``sep`` marks a round where every
attacker is more alike than every honest client.

    python benchmarks/sybil_signal.py --alpha 0.1 --f 6 --attack backdoor-bounded
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fl_sim import RuleSpec, Setting, make_federation, run_group  # noqa: E402
from robustness import parse_label  # noqa: E402

from fedgate.strategies.aggregators.flame import cosine_distances  # noqa: E402
from fedgate.strategies.aggregators.foolsgold import (  # noqa: E402
    foolsgold_weights,
    median_residuals,
)


def top_similarity(x: np.ndarray) -> np.ndarray:
    """Each row's highest cosine similarity to another row."""
    cs = 1.0 - cosine_distances(x)
    np.fill_diagonal(cs, -np.inf)
    return cs.max(axis=1)


def spread(values: np.ndarray) -> str:
    return f"{values.min():.2f}/{np.median(values):.2f}/{values.max():.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--f", type=int, default=4)
    ap.add_argument("--attack", default="backdoor-bounded")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rule", default="ensemble", help="the trajectory (a robustness label)")
    args = ap.parse_args(argv)
    setting = Setting(alpha=args.alpha, f=args.f, rounds=args.rounds, seed=args.seed)
    byz = make_federation(setting, args.attack).byzantine
    honest = np.setdiff1d(np.arange(setting.n), byz)
    name, pre, params = parse_label(args.rule)

    from _fl_sim import fedgate_step

    inner = fedgate_step(name, pre, **params)

    def make(s: Setting):
        step = inner(s)
        sums: dict[str, np.ndarray] = {}
        rnd = [0]

        def watched(deltas, glob, counts, server):
            rnd[0] += 1
            now = {"update": deltas.astype(np.float64), "residual": median_residuals(deltas)}
            for key, value in now.items():
                sums[key] = value if key not in sums else sums[key] + value
            if rnd[0] == 1 or rnd[0] % args.every == 0:
                feats = {**now, **{f"{k} history": v for k, v in sums.items()}}
                for key, value in feats.items():
                    top = top_similarity(value)
                    sep = "sep" if top[byz].min() > top[honest].max() else "-"
                    print(
                        f"round {rnd[0]:3d} {key:17s} honest {spread(top[honest])}"
                        f"  attackers {spread(top[byz])}  {sep}"
                    )
                w = foolsgold_weights(list(sums.values())).weight
                print(
                    f"round {rnd[0]:3d} FoolsGold weights (paper form, history): attackers "
                    f"{spread(w[byz])}, honest below 1: {int(np.sum(w[honest] < 1))}",
                    flush=True,
                )
            return step(deltas, glob, counts, server)

        step_preview = getattr(step, "preview", None)
        if step_preview is not None:
            watched.preview = step_preview  # type: ignore[attr-defined]
        return watched

    (res,) = run_group(setting, args.attack, [RuleSpec(args.rule, "fedgate", make)])
    print(f"final accuracy {res.accuracy:.3f}, backdoor success {res.backdoor_asr}")


if __name__ == "__main__":
    main()
