"""SE cost, paired and interleaved: Res-SE-Net's training-step time over ResNet's at each depth (goal: < 5%).

The paper's Res-SE-Net is ResNet plus SE blocks on the bridge connections, so the two differ only by those blocks:
their cost is Res-SE-Net's time per training step over ResNet's, minus one. On a shared machine the speed drifts by
more than that (other load, frequency), and timing the two models minutes apart (``scaling.py``) measured the drift.
Here both models' bare steps (forward, backward, SGD on one fixed batch, ``_common.make_bare_step``, the
engine's default switch) live side by side on the same weights (the ResNet takes the Res-SE-Net's, SE blocks
aside), held there by a zero learning rate (the update's arithmetic is still done), so every round computes on the
same numbers. They are timed in alternating blocks of ``--steps`` steps in ABBA order (ResNet first in even rounds,
Res-SE-Net first in odd ones), so a drift hits both equally. The data pipeline is the same for both models and
costs next to nothing (``train_throughput.py``), so the step is where a difference can be.

Per depth it prints the median over rounds of the per-round ratio minus one, a 95% bootstrap interval of that
median, the ratio of total times minus one, and the SE blocks' share of the FLOPs. Single-step blocks (the default)
pair steps a second apart, so a drift slower than that cancels; the spread left is the step-to-step jitter of a
shared machine (about 10-25% here), which more rounds narrow.

A second, direct measure does not depend on that jitter: every SE block of the Res-SE-Net is timed alone (forward
and backward on its real input shape, in the switch's memory format and precision, compiled when the switch
compiles; median of ``--se-reps``) and its time put over the Res-SE-Net step's median. Inside the network the
blocks do the same work on the same tensors, so this is what they add to the step, give or take cache effects
(alone, their input is warm in cache)::

    python3 benchmarks/se_cost.py                                  # depths 20,32,44,56,110; 15-30 min here
    python3 benchmarks/se_cost.py --depths 20 --rounds 4 --batch-size 16 --se-reps 5    # smoke
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def se_blocks_seconds(model_name: str, switch: common.Switch, device: torch.device, *, batch_size: int,
                      reps: int) -> list[float]:
    """Median seconds of forward + backward of each SE block of ``model_name`` alone, on its input in the network.

    The inputs are captured from one forward pass of the network set up as for training (``train_model``: memory
    format, precision), so each block sees the shape, layout and dtype it sees in training.
    """
    from ressenet.models.layers import SEBlock

    model, r, fmt, amp = common.train_model(model_name, switch, device)
    blocks = [m for m in model.modules() if isinstance(m, SEBlock)]
    if not blocks:
        raise SystemExit(f"error: {model_name} has no SE blocks; pass an SE family with --se")
    inputs: list[torch.Tensor] = []
    handles = [b.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].detach().clone())) for b in blocks]
    with torch.no_grad(), amp:
        model(torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt))
    for h in handles:
        h.remove()
    seconds = []
    for block, x in zip(blocks, inputs):
        x = x.requires_grad_()
        grad = torch.randn_like(x)
        # Compiled when the switch compiles, so the block's ops fuse as they can inside the compiled network.
        run_block = torch.compile(block, mode=r.compile_mode) if r.compile else block

        def fwd_bwd(block: Any = run_block, x: torch.Tensor = x, grad: torch.Tensor = grad) -> None:
            with amp:
                out = block(x)
            out.backward(grad)

        for _ in range(3):
            fwd_bwd()
        seconds.append(statistics.median(common.timed_steps(fwd_bwd, 1, device) for _ in range(reps)))
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--depths", default="20,32,44,56,110")
    parser.add_argument("--base", default="resnet", help="family without SE blocks")
    parser.add_argument("--se", default="res_se_net", help="family with them")
    parser.add_argument("--switch", default="default", help="engine switch (see train_throughput.py)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=40, help="ABBA rounds per depth")
    parser.add_argument("--steps", type=int, default=1, help="training steps per timed block")
    parser.add_argument("--se-reps", type=int, default=50, help="timed repeats of each SE block alone")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each model before the rounds")
    parser.add_argument("--goal", type=float, default=0.05)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    if args.rounds < 2 or args.steps < 1 or args.se_reps < 1:
        parser.error("--rounds must be at least 2, --steps and --se-reps at least 1")
    common.apply_threads(args)
    device = common.resolve_device(args.device)
    switch = common.parse_switch(args.switch)
    depths = [int(d) for d in common.parse_list(args.depths)]
    from ressenet.models import create_model

    info = common.header("SE cost: Res-SE-Net's training step over ResNet's, interleaved", device)
    print(f"switch {switch.label(device)}, batch {args.batch_size}, {args.rounds} ABBA rounds of {args.steps} "
          f"step(s) per model per depth, {args.warmup} warm-up steps each")
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for d in depths:
        names = (f"{args.base}{d}", f"{args.se}{d}")
        flops = [common.train_flops_per_image(n)[1] for n in names]
        # The same weights in both (the ResNet takes the Res-SE-Net's, SE blocks aside) and lr 0, so they stay the
        # same: both compute on the same numbers in every round, and only the SE blocks differ.
        torch.manual_seed(0)
        init = create_model(names[1], num_classes=10).state_dict()
        steps = [common.make_bare_step(n, switch, device, batch_size=args.batch_size, lr=0.0, init=init)
                 for n in names]
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
        del steps
        se_seconds = se_blocks_seconds(names[1], switch, device, batch_size=args.batch_size, reps=args.se_reps)
        se_share = sum(se_seconds) / (statistics.median(times[1]) / args.steps)
        row = {"depth": d, "models": names, "train_flops": flops, "se_flops_share": flops[1] / flops[0] - 1,
               "images_per_second": rate, "ratios": ratios, "median": med, "ci95": [lo, hi], "total": total,
               "block_seconds": times, "se_block_seconds": se_seconds, "se_direct_share": se_share}
        rows.append(row)
        print(f"  depth {d:>4}: {names[0]} {rate[0]:8.1f} img/s, {names[1]} {rate[1]:8.1f} img/s; SE cost median "
              f"{100 * med:+.2f}% [{100 * lo:+.2f}, {100 * hi:+.2f}], totals {100 * total:+.2f}%; "
              f"{len(se_seconds)} SE blocks alone {1000 * sum(se_seconds):.2f} ms = {100 * se_share:.2f}% of the step",
              flush=True)

    print()
    print(f"{'depth':>5} {'GFLOP/img':>9} {'ResNet img/s':>13} {'Res-SE-Net img/s':>17} {'SE cost median':>15} "
          f"{'95% CI':>18} {'totals':>8} {'SE FLOPs':>9} {'SE alone':>9}")
    for r in rows:
        ci = f"[{100 * r['ci95'][0]:+.2f}, {100 * r['ci95'][1]:+.2f}]"
        print(f"{r['depth']:>5} {r['train_flops'][0] / 1e9:9.3f} {r['images_per_second'][0]:13.1f} "
              f"{r['images_per_second'][1]:17.1f} {100 * r['median']:+14.2f}% {ci:>18} {100 * r['total']:+7.2f}% "
              f"{100 * r['se_flops_share']:8.4f}% {100 * r['se_direct_share']:8.2f}%")
    worst = max(rows, key=lambda r: r["ci95"][1])
    met = all(r["ci95"][1] < args.goal for r in rows)
    print(f"SE cost goal (< {100 * args.goal:g}% at every depth), interleaved, judged on the upper end of the 95% "
          f"interval: {'met' if met else 'NOT met'} (largest upper end {100 * worst['ci95'][1]:+.2f}% at depth "
          f"{worst['depth']})")
    worst_direct = max(rows, key=lambda r: r["se_direct_share"])
    direct_met = all(r["se_direct_share"] < args.goal for r in rows)
    print(f"SE cost goal, direct (SE blocks timed alone over the step): {'met' if direct_met else 'NOT met'} "
          f"(largest {100 * worst_direct['se_direct_share']:.2f}% at depth {worst_direct['depth']})")
    return common.finish(info, args.json, {"info": info, "switch": switch.name, "batch_size": args.batch_size,
                                           "rounds": args.rounds, "steps": args.steps, "se_reps": args.se_reps,
                                           "rows": rows, "goal_met": met, "direct_goal_met": direct_met}, t_start)


if __name__ == "__main__":
    raise SystemExit(main())
