"""Where a CPU training step's time goes: a profile of the bare step, and each convolution shape's FLOP rate.

Two parts, for the goal "end-to-end training at 1.4x the released-code pipeline" and the question why the step
reaches only part of the machine's matrix-multiply rate (``roofline.py``):

1. The bare step (forward, backward, SGD on one fixed batch, ``_common.make_bare_step``) under ``--switch``,
   profiled with ``torch.profiler`` over ``--steps`` steps after a warm-up: self time per class of operator
   (convolution forward, convolution backward, the compiled graph's own fused kernels, optimizer, the rest), in
   ms per step and as a share.
2. Every distinct 3x3 convolution of the ResNet-20 family at batch ``--batch-size``, in the switch's memory
   format: forward, input gradient and weight gradient timed alone (``aten.convolution`` and
   ``aten.convolution_backward``, median of ``--reps``), as GFLOP/s, and summed over the layers of a depth-20 net.

    python3 benchmarks/step_profile.py                     # res_se_net20, the engine's default switch
    python3 benchmarks/step_profile.py --switch fp32       # the released code's eager NCHW
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

# (in channels, out channels, input side, stride, how many in a depth-20 net: 3 stages of 3 blocks of 2 convs)
CONV_SHAPES = [(3, 16, 32, 1, 1), (16, 16, 32, 1, 6), (16, 32, 32, 2, 1), (32, 32, 16, 1, 5), (32, 64, 16, 2, 1),
               (64, 64, 8, 1, 5)]


def classify(name: str) -> str:
    if name == "aten::convolution_backward":
        return "convolution backward"
    if name in ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution", "aten::thnn_conv2d"):
        return "convolution forward"
    if name.startswith("## Call CompiledFxGraph"):
        return "compiled graph's own kernels"
    if name.startswith(("Optimizer.", "aten::_foreach")):
        return "optimizer"
    return "everything else"


def profile_step(model: str, switch: common.Switch, device: torch.device, *, steps: int, warmup: int,
                 batch_size: int) -> dict[str, float]:
    """ms per step of self time per operator class (``classify``)."""
    from torch.profiler import ProfilerActivity, profile

    step = common.make_bare_step(model, switch, device, batch_size=batch_size)
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    shares: dict[str, float] = {}
    for e in prof.key_averages():
        k = classify(e.key)
        shares[k] = shares.get(k, 0.0) + e.self_cpu_time_total / 1e3 / steps
    return shares


def median_seconds(f: Callable[[], Any], reps: int) -> float:
    """Median of ``reps`` single-call timings (``_common.timed_steps``) after 3 untimed calls."""
    for _ in range(3):
        f()
    return statistics.median(common.timed_steps(f, 1, torch.device("cpu")) for _ in range(reps))


def conv_rates(fmt: torch.memory_format, batch: int, reps: int) -> list[dict[str, Any]]:
    aten = torch.ops.aten
    rows = []
    for cin, cout, side, stride, count in CONV_SHAPES:
        x = torch.randn(batch, cin, side, side).contiguous(memory_format=fmt)
        w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=fmt)
        conv = (w, None, [stride, stride], [1, 1], [1, 1], False, [0, 0], 1)
        g = torch.randn_like(aten.convolution(x, *conv))

        def backward(mask: list[bool], g=g, x=x, w=w, stride=stride) -> Callable[[], Any]:
            return lambda: aten.convolution_backward(g, x, w, None, [stride, stride], [1, 1], [1, 1], False,
                                                     [0, 0], 1, mask)

        flops = 2 * batch * cout * cin * 9 * (side // stride) ** 2
        t = {"forward": median_seconds(lambda x=x, conv=conv: aten.convolution(x, *conv), reps),
             "input grad": median_seconds(backward([True, False, False]), reps),
             "weight grad": median_seconds(backward([False, True, False]), reps)}
        if cin == 3:
            t["input grad"] = 0.0  # the image needs no gradient: the engine never computes this one
        rows.append({"shape": f"{cin}->{cout} {side}x{side} s{stride}", "count": count, "flops": flops, "seconds": t})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="res_se_net20")
    parser.add_argument("--switch", default="default", help="default | PRECISION[+cl|+nchw][+compile]")
    parser.add_argument("--steps", type=int, default=10, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=15, help="steps before profiling (compilation included)")
    parser.add_argument("--reps", type=int, default=10, help="timings per convolution (median)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu: the profile's classes are the CPU's operators")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    common.apply_threads(args)
    device = common.resolve_device(args.device)
    info = common.header("where a CPU training step's time goes", device)
    t_start = time.perf_counter()
    switch = common.parse_switch(args.switch).resolved(device)

    shares = profile_step(args.model, switch, device, steps=args.steps, warmup=args.warmup,
                          batch_size=args.batch_size)
    total = sum(shares.values())
    print(f"\n{args.model}, bare step, switch {switch.name}, batch {args.batch_size}: self time per step, "
          f"{args.steps} profiled steps")
    for k, v in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<32} {v:8.1f} ms {100 * v / total:6.1f}%")
    print(f"  {'total':<32} {total:8.1f} ms  ({args.batch_size / total * 1e3:.0f} images/s under the profiler)")

    fmt = torch.channels_last if switch.channels_last else torch.contiguous_format
    rows = conv_rates(fmt, args.batch_size, args.reps)
    print(f"\n3x3 convolutions alone, {'channels-last' if switch.channels_last else 'NCHW'} fp32, batch "
          f"{args.batch_size}: GFLOP/s (median of {args.reps}); x = layers of that shape in a depth-20 net")
    print(f"  {'shape':<20} {'x':>2} {'forward':>9} {'input grad':>11} {'weight grad':>12}")
    sums = {"forward": 0.0, "input grad": 0.0, "weight grad": 0.0}
    for r in rows:
        cells = []
        for k in sums:
            sec = r["seconds"][k]
            sums[k] += sec * r["count"]
            cells.append(f"{r['flops'] / sec / 1e9:.1f}" if sec else "-")
        print(f"  {r['shape']:<20} {r['count']:>2} {cells[0]:>9} {cells[1]:>11} {cells[2]:>12}")
    print("  summed over a depth-20 net's convolutions, ms per step: "
          + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in sums.items()))
    return common.finish(info, args.json, {"info": info, "model": args.model, "switch": switch.name,
                                           "profile_ms_per_step": shares, "convolutions": rows,
                                           "conv_ms_per_step_depth20": {k: v * 1e3 for k, v in sums.items()}},
                         t_start)


if __name__ == "__main__":
    raise SystemExit(main())
