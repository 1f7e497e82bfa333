"""SE cost, paired and interleaved: Res-SE-Net's training-step time over ResNet's at each depth (goal: < 5%).

The paper's Res-SE-Net is ResNet plus SE blocks on the bridge connections, so the two differ only by those blocks:
their cost is Res-SE-Net's time per training step over ResNet's, minus one. On a shared machine the speed drifts by
more than that (other load, frequency), and timing the two models minutes apart (``scaling.py``) measured the drift.
Here both models' bare steps (forward, backward, SGD on one fixed batch, ``_common.make_bare_step``, the engine's
default switch) live side by side and are timed in alternating blocks of ``--steps`` steps, in ABBA order (ResNet
first in even rounds, Res-SE-Net first in odd ones), so a drift hits both equally. The data pipeline is the same
for both models and costs next to nothing (``train_throughput.py``), so the step is where a difference can be.

Per depth it prints the median over rounds of the per-round ratio minus one, a 95% bootstrap interval of that
median, the ratio of total times minus one, and the SE blocks' share of the FLOPs::

    python3 benchmarks/se_cost.py                                  # depths 20,32,44,56,110; about 15 min here
    python3 benchmarks/se_cost.py --depths 20 --rounds 4 --steps 1 --batch-size 16    # smoke
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common


def bootstrap_median_ci(values: list[float], *, level: float = 0.95, draws: int = 10_000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (seeded: the same values give the same interval)."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    meds = np.median(rng.choice(v, size=(draws, len(v)), replace=True), axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--depths", default="20,32,44,56,110")
    parser.add_argument("--base", default="resnet", help="family without SE blocks")
    parser.add_argument("--se", default="res_se_net", help="family with them")
    parser.add_argument("--switch", default="default", help="engine switch (see train_throughput.py)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12, help="ABBA rounds per depth")
    parser.add_argument("--steps", type=int, default=2, help="training steps per timed block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each model before the rounds")
    parser.add_argument("--goal", type=float, default=0.05)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    if args.rounds < 2 or args.steps < 1:
        parser.error("--rounds must be at least 2 and --steps at least 1")
    common.apply_threads(args)
    device = common.resolve_device(args.device)
    switch = common.parse_switch(args.switch)
    depths = [int(d) for d in common.parse_list(args.depths)]

    info = common.header("SE cost: Res-SE-Net's training step over ResNet's, interleaved", device)
    print(f"switch {switch.label(device)}, batch {args.batch_size}, {args.rounds} ABBA rounds of {args.steps} "
          f"step(s) per model per depth, {args.warmup} warm-up steps each")
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for d in depths:
        names = (f"{args.base}{d}", f"{args.se}{d}")
        flops = [common.train_flops_per_image(n)[1] for n in names]
        steps = [common.make_bare_step(n, switch, device, batch_size=args.batch_size) for n in names]
        for s in steps:
            for _ in range(args.warmup):
                s()
        times: list[list[float]] = [[], []]
        for r in range(args.rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for i in order:
                times[i].append(common.timed_steps(steps[i], args.steps, device))
        ratios = [b / a - 1 for a, b in zip(*times)]
        med = statistics.median(ratios)
        lo, hi = bootstrap_median_ci(ratios)
        total = sum(times[1]) / sum(times[0]) - 1
        rate = [args.batch_size * args.steps * len(t) / sum(t) for t in times]
        row = {"depth": d, "models": names, "train_flops": flops, "se_flops_share": flops[1] / flops[0] - 1,
               "images_per_second": rate, "ratios": ratios, "median": med, "ci95": [lo, hi], "total": total,
               "block_seconds": times}
        rows.append(row)
        print(f"  depth {d:>4}: {names[0]} {rate[0]:8.1f} img/s, {names[1]} {rate[1]:8.1f} img/s; SE cost median "
              f"{100 * med:+.2f}% [{100 * lo:+.2f}, {100 * hi:+.2f}], totals {100 * total:+.2f}%", flush=True)
        del steps

    print()
    print(f"{'depth':>5} {'GFLOP/img':>9} {'ResNet img/s':>13} {'Res-SE-Net img/s':>17} {'SE cost median':>15} "
          f"{'95% CI':>18} {'totals':>8} {'SE FLOPs':>9}")
    for r in rows:
        ci = f"[{100 * r['ci95'][0]:+.2f}, {100 * r['ci95'][1]:+.2f}]"
        print(f"{r['depth']:>5} {r['train_flops'][0] / 1e9:9.3f} {r['images_per_second'][0]:13.1f} "
              f"{r['images_per_second'][1]:17.1f} {100 * r['median']:+14.2f}% {ci:>18} {100 * r['total']:+7.2f}% "
              f"{100 * r['se_flops_share']:8.4f}%")
    worst = max(rows, key=lambda r: r["ci95"][1])
    met = all(r["ci95"][1] < args.goal for r in rows)
    print(f"SE cost goal (< {100 * args.goal:g}% at every depth, judged on the upper end of the 95% interval): "
          f"{'met' if met else 'NOT met'} (largest upper end {100 * worst['ci95'][1]:+.2f}% at depth "
          f"{worst['depth']})")
    return common.finish(info, args.json, {"info": info, "switch": switch.name, "batch_size": args.batch_size,
                                           "rounds": args.rounds, "steps": args.steps, "rows": rows,
                                           "goal_met": met}, t_start)


if __name__ == "__main__":
    raise SystemExit(main())
