"""How training cost grows: images/s against depth (20 -> 110) and against batch size, set against the FLOP count.

* **depth**: ResNet and Res-SE-Net at each of ``--depths``, trained through the engine (``train(cfg)``, data
  pipeline included, the engine's default switch; ``--mode bare`` times the bare step on a synthetic batch
  instead). FLOPs predict images/s(d) = images/s(20) x FLOPs(20) / FLOPs(d) within a family; the table gives
  measured / predicted. The two families run back to back at each depth, so the **SE cost** (Res-SE-Net's time
  per image over ResNet's, minus one; the goal is under 5% at every depth) is a paired figure: the median over
  repeats of the per-repeat ratio. Its FLOP share is printed beside it.
* **batch size**: ``--batch-model`` at each of ``--batch-sizes``; FLOPs per image do not depend on the batch, so
  FLOPs predict a flat line; the table gives images/s relative to batch 128.

Each run has one warm-up logging interval and ``--intervals`` timed ones; iterations are scaled so every run
trains about as many FLOPs as the cheapest one (by forward MACs and by batch size). Repeats alternate over the
whole sweep; medians are reported. Deviations from the FLOP prediction beyond ``--tolerance`` are listed at the end.

    python3 benchmarks/scaling.py                       # depth and batch sweeps (CPU: about 25 min on a quiet machine)
    python3 benchmarks/scaling.py --sweep depth --mode bare
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sweep", choices=["depth", "batch", "both"], default="both")
    parser.add_argument("--mode", choices=["engine", "bare"], default="engine",
                        help="engine: train(cfg) with its data pipeline; bare: the step on a synthetic batch")
    parser.add_argument("--switch", default="default", help="engine switch (see train_throughput.py)")
    parser.add_argument("--families", default="resnet,res_se_net")
    parser.add_argument("--depths", default="20,32,44,56,110")
    parser.add_argument("--depth-batch", type=int, default=128, help="batch size of the depth sweep")
    parser.add_argument("--batch-model", default="res_se_net20")
    parser.add_argument("--batch-sizes", default="32,64,128,256,512")
    parser.add_argument("--log-every", type=int, default=None,
                        help="iterations per interval for the cheapest run at batch 128 (default: 10 CPU, 50 CUDA)")
    parser.add_argument("--intervals", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.10, help="flag |measured / predicted - 1| above this")
    common.add_data_args(parser)
    args = parser.parse_args()
    common.apply_threads(args)

    device = common.resolve_device(args.device)
    switch = common.parse_switch(args.switch)
    info = common.header(f"scaling with depth and batch size ({args.mode}, switch {switch.label(device)})", device)
    t_start = time.perf_counter()
    log_base = args.log_every or (50 if device.type == "cuda" else 10)
    families, depths = common.parse_list(args.families), [int(d) for d in common.parse_list(args.depths)]
    batch_sizes = [int(b) for b in common.parse_list(args.batch_sizes)]

    def measure(model: str, batch: int, log_every: int) -> float:
        if args.mode == "bare":
            return common.bare_run(model, switch, device, warmup=log_every, iters=log_every * args.intervals,
                                   batch_size=batch)
        return common.engine_run(model, switch, args, log_every=log_every, intervals=args.intervals,
                                 batch_size=batch)["images_per_second"]

    results: dict[str, Any] = {"info": info, "mode": args.mode, "switch": switch.name}
    notes: list[str] = []

    if args.sweep in ("depth", "both"):
        models = [(f, d, f"{f}{d}") for d in depths for f in families]
        cost = {name: common.train_flops_per_image(name) for _, _, name in models}
        macs_min = min(c[0] for c in cost.values())
        rates: dict[str, list[float]] = {name: [] for _, _, name in models}
        for rep in range(args.repeats):
            for _, _, name in models:
                le = common.scaled_log_every(log_base, cost[name][0], macs_min)
                rates[name].append(measure(name, args.depth_batch, le))
                print(f"  [depth rep {rep + 1}] {name:<15} {rates[name][-1]:9.1f} img/s", flush=True)
        print()
        print(f"images/s against depth, batch {args.depth_batch}; 'pred.' = depth-20 rate x FLOPs(20) / FLOPs(d); "
              "SE cost = (Res-SE-Net time per image / ResNet's) - 1, median of paired repeats")
        head = f"{'depth':>5} {'GFLOP/img':>9}"
        for f in families:
            head += f" | {f + ' img/s':>28} {'pred.':>7} {'meas/pred':>9}"
        has_pair = "resnet" in families and "res_se_net" in families
        if has_pair:
            head += f" | {'SE cost':>8} {'(min..max)':>16} {'SE FLOPs':>9}"
        print(head)
        table = []
        for d in depths:
            line = f"{d:>5} {cost[f'{families[0]}{d}'][1] / 1e9:9.3f}"
            entry: dict[str, Any] = {"depth": d}
            for f in families:
                name, base = f"{f}{d}", f"{f}{depths[0]}"
                med = statistics.median(rates[name])
                pred = statistics.median(rates[base]) * cost[base][1] / cost[name][1]
                line += f" | {common.fmt_rate(rates[name]):>28} {pred:7.1f} {med / pred:9.2f}"
                entry[f] = {"runs": rates[name], "median": med, "predicted": pred, "train_flops": cost[name][1]}
                if abs(med / pred - 1) > args.tolerance:
                    notes.append(f"{name}: {med:.1f} img/s is {med / pred:.2f}x the FLOP prediction {pred:.1f} "
                                 f"(from {base})")
            if has_pair:
                r, s = rates[f"resnet{d}"], rates[f"res_se_net{d}"]
                paired = [a / b - 1 for a, b in zip(r, s)]
                se = statistics.median(paired)
                se_flops = cost[f"res_se_net{d}"][1] / cost[f"resnet{d}"][1] - 1
                line += f" | {100 * se:7.1f}% {f'({100 * min(paired):.1f}..{100 * max(paired):.1f})':>16} " \
                        f"{100 * se_flops:8.4f}%"
                entry["se_cost"] = {"median": se, "paired": paired, "flops_share": se_flops}
                if se >= 0.05:
                    notes.append(f"depth {d}: SE blocks cost {100 * se:.1f}% of ResNet's training time "
                                 f"(goal < 5%; their FLOPs are {100 * se_flops:.4f}%)")
            table.append(entry)
            print(line)
        if has_pair:
            worst = max(e["se_cost"]["median"] for e in table)
            print(f"SE cost goal (< 5% at every depth): {'met' if worst < 0.05 else 'NOT met'} "
                  f"(largest median {100 * worst:.1f}%)")
        results["depth"] = table

    if args.sweep in ("batch", "both"):
        name = args.batch_model
        rates_b: dict[int, list[float]] = {b: [] for b in batch_sizes}
        for rep in range(args.repeats):
            for b in batch_sizes:
                le = max(1, round(log_base * 128 / b))
                rates_b[b].append(measure(name, b, le))
                print(f"  [batch rep {rep + 1}] {name} batch {b:<5} {rates_b[b][-1]:9.1f} img/s", flush=True)
        ref_b = 128 if 128 in rates_b else batch_sizes[0]
        ref = statistics.median(rates_b[ref_b])
        print()
        print(f"images/s against batch size, {name} (FLOPs per image are constant: predicted flat at the batch-"
              f"{ref_b} rate)")
        print(f"{'batch':>6} {'images/s median (min..max)':>28} {f'x batch {ref_b}':>11} {'ms/step':>8}")
        table_b = []
        for b in batch_sizes:
            med = statistics.median(rates_b[b])
            print(f"{b:>6} {common.fmt_rate(rates_b[b]):>28} {med / ref:10.2f}x {1000 * b / med:8.1f}")
            table_b.append({"batch": b, "runs": rates_b[b], "median": med, "relative": med / ref})
            if abs(med / ref - 1) > args.tolerance:
                notes.append(f"{name} batch {b}: {med / ref:.2f}x the batch-{ref_b} images/s (FLOPs predict 1.00x)")
        results["batch"] = table_b

    print()
    if notes:
        print(f"where cost does not follow the FLOPs (beyond {100 * args.tolerance:.0f}%):")
        for n in notes:
            print(f"  - {n}")
    else:
        print(f"cost follows the FLOP count within {100 * args.tolerance:.0f}% everywhere measured")
    results["notes"] = notes
    return common.finish(info, args.json, results, t_start)


if __name__ == "__main__":
    raise SystemExit(main())
