"""Is there a trigger signal? Per round, the trigger scan's anomaly index of attackers and honest
clients (``strategies/aggregators/trigger_scan.py``, Neural Cleanse per client).

Runs one cell of the robustness protocol (``_fl_sim``: digits, n = 20, the ``--rule``
trajectory, the region default unless told) and at round 1, 2 and every ``--every`` rounds
prints min / median / max over clients of the scan's score (threshold: the scan's, 3.5) for
honest clients and attackers, ``sep`` when every attacker scores above every honest client,
and the scan's wall time. ``--boost k`` scans ``global + k * delta`` instead; ``--history``
scans the mean of each client's deltas so far in place of its delta (times ``--boost``).

    python benchmarks/trigger_scan_signal.py --alpha 0.5 --f 4 --attack backdoor
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fl_sim import SHAPES, RuleSpec, Setting, fedgate_step, make_federation, run_group
from robustness import parse_label
from sybil_signal import spread

from fedgate.strategies.aggregators.trigger_scan import ScanProbe, TriggerScan


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--f", type=int, default=4)
    ap.add_argument("--attack", default="backdoor")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boost", type=float, default=1.0)
    ap.add_argument("--history", action="store_true", help="scan the mean delta so far")
    ap.add_argument("--rule", default="ensemble", help="the trajectory (a robustness label)")
    args = ap.parse_args(argv)
    setting = Setting(alpha=args.alpha, f=args.f, rounds=args.rounds, seed=args.seed)
    byz = make_federation(setting, args.attack).byzantine
    honest = np.setdiff1d(np.arange(setting.n), byz)
    inner = fedgate_step(*parse_label(args.rule)[:2], **parse_label(args.rule)[2])
    scan = TriggerScan()

    def make(s: Setting):
        step, rnd, total = inner(s), [0], [np.zeros(0)]

        def watched(deltas, glob, counts, server):
            rnd[0] += 1
            now = deltas.astype(np.float64)
            total[0] = now if rnd[0] == 1 else total[0] + now
            scanned = total[0] / rnd[0] if args.history else now
            if rnd[0] in (1, 2) or rnd[0] % args.every == 0:
                probe = ScanProbe(glob, server.root.x, server.root.y, SHAPES)
                start = time.perf_counter()
                score = scan.scores(args.boost * scanned, probe)
                took = time.perf_counter() - start
                sep = "sep" if score[byz].min() > score[honest].max() else "-"
                print(
                    f"round {rnd[0]:3d} honest {spread(score[honest])}  attackers "
                    f"{spread(score[byz])}  {sep}  ({took:.2f} s)",
                    flush=True,
                )
            return step(deltas, glob, counts, server)

        return watched

    (res,) = run_group(setting, args.attack, [RuleSpec(args.rule, "fedgate", make)])
    print(f"final accuracy {res.accuracy:.3f}, backdoor success {res.backdoor_asr}")


if __name__ == "__main__":
    main()
