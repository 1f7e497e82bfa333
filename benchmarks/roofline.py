"""Roofline: training FLOPs per image, the measured matrix-multiply rate, and the fraction each model achieves.

* **FLOPs per image**, counted from the layers (``ressenet.models.count_macs``: every convolution and linear layer
  of one forward pass; BN, ReLU, pooling, the SE scale and the additions, about 1%, are left out as in He et al.):
  training = 3 x 2 x forward MACs (forward, then the two backward products: input and weight gradients). Also
  split by layer kind (3x3 convolutions, 1x1 bridge projections, SE fully-connected layers, the head).
* **peak**: ``torch.mm`` on square float32 matrices (``--sizes``), timed ``--repeats`` times after a warm-up with
  torch's threads; the best size's median is the machine's measured rate. On CUDA bf16 is measured too, and bf16
  training is set against it.
* **achieved**: training images/s of each model, through the engine (``train(cfg)``, data pipeline included;
  see ``train_throughput.py``) and as the bare step (forward, backward, SGD on a synthetic batch), for the engine's
  default switch on the device; fraction = images/s x training FLOPs per image / peak. ``--from-json`` takes the
  images/s from a ``train_throughput.py --json`` file instead of measuring them again.

    python3 benchmarks/roofline.py                                    # measures everything (CPU: ~15 min)
    python3 benchmarks/roofline.py --from-json benchmarks/results/train_throughput.json  # FLOPs and peak only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common


def flops_breakdown(model_name: str) -> dict[str, int]:
    """Forward MACs per image by layer kind; their sum equals ``count_macs``."""
    from ressenet.models import count_macs, create_model
    from ressenet.models.layers import SEBlock

    model = create_model(model_name, num_classes=10).eval()
    se_linears = {id(m) for blk in model.modules() if isinstance(blk, SEBlock) for m in blk.modules()
                  if isinstance(m, nn.Linear)}
    parts = {"conv3x3": 0, "conv1x1": 0, "se_fc": 0, "head_fc": 0}

    def hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            parts["conv3x3" if m.kernel_size == (3, 3) else "conv1x1"] += out[0].numel() * k
        else:
            parts["se_fc" if id(m) in se_linears else "head_fc"] += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    total = count_macs(model)
    if sum(parts.values()) != total:
        raise AssertionError(f"{model_name}: breakdown {parts} does not add up to count_macs {total}")
    return parts | {"total": total, "params": sum(p.numel() for p in model.parameters())}


def matmul_rates(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> list[float]:
    """FLOP/s of ``torch.mm`` on (n, n) x (n, n), one figure per repeat (each at least ~50 ms of work)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    flops = 2.0 * n ** 3
    torch.mm(a, b, out=c)  # warm-up (and a first estimate of the time)
    common.sync(device)
    t0 = time.perf_counter()
    torch.mm(a, b, out=c)
    common.sync(device)
    inner = max(1, int(0.05 / max(time.perf_counter() - t0, 1e-6)))
    rates = []
    for _ in range(repeats):
        common.sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        common.sync(device)
        rates.append(flops * inner / (time.perf_counter() - t0))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default=common.DEFAULT_MODELS)
    parser.add_argument("--switch", default="default",
                        help="engine switch whose images/s are set against the peak (see train_throughput.py)")
    parser.add_argument("--sizes", default=None, help="square matmul sizes (default: 1024,2048,4096 on the CPU, "
                                                       "4096,8192 on CUDA)")
    parser.add_argument("--mm-repeats", type=int, default=10, help="timed matmul samples per size")
    parser.add_argument("--log-every", type=int, default=None,
                        help="iterations per interval for the cheapest model (default: 10 on the CPU, 50 on CUDA)")
    parser.add_argument("--intervals", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3, help="alternating engine/bare repeats per model")
    parser.add_argument("--no-engine", action="store_true", help="bare step only (faster, no data)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="images/s from a train_throughput.py --json file (engine default switch, bare step)")
    parser.add_argument("--batch-size", type=int, default=128)
    common.add_data_args(parser)
    args = parser.parse_args()
    common.apply_threads(args)

    device = common.resolve_device(args.device)
    models = common.parse_list(args.models)
    switch = common.parse_switch(args.switch)
    res = switch.resolved(device)
    info = common.header("roofline: training FLOPs, matmul peak, achieved fraction", device)
    t_start = time.perf_counter()

    # FLOPs ---------------------------------------------------------------------------------------------------
    costs = {m: flops_breakdown(m) for m in models}
    print()
    print(f"{'model':<15} {'params':>9} {'fwd MMAC':>9} {'3x3 conv':>9} {'1x1 bridge':>10} {'SE fc':>7} "
          f"{'head':>6} {'train GFLOP/img':>15}")
    for m, c in costs.items():
        print(f"{m:<15} {c['params']:>9,} {c['total'] / 1e6:9.2f} {c['conv3x3'] / 1e6:9.2f} {c['conv1x1'] / 1e6:10.3f} "
              f"{c['se_fc'] / 1e6:7.4f} {c['head_fc'] / 1e6:6.4f} {6 * c['total'] / 1e9:15.3f}")
    print("(MMAC = 1e6 multiply-accumulates of one forward pass; training FLOPs = 3 passes x 2 FLOPs x MACs)")

    # Peak ----------------------------------------------------------------------------------------------------
    default_sizes = "4096,8192" if device.type == "cuda" else "1024,2048,4096"
    sizes = [int(s) for s in common.parse_list(args.sizes or default_sizes)]
    dtypes = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if device.type == "cuda" else {})
    peaks: dict[str, float] = {}
    mm: dict[str, Any] = {}
    print()
    print(f"torch.mm, {args.mm_repeats} samples per size after a warm-up; GFLOP/s median (min..max)")
    for dname, dt in dtypes.items():
        for n in sizes:
            r = matmul_rates(n, dt, device, args.mm_repeats)
            med = statistics.median(r)
            mm[f"{dname}_{n}"] = {"median": med, "min": min(r), "max": max(r)}
            peaks[dname] = max(peaks.get(dname, 0.0), med)
            print(f"  {dname} {n:>5} x {n:<5} {med / 1e9:10.1f} ({min(r) / 1e9:.1f}..{max(r) / 1e9:.1f})", flush=True)
    print("  measured peak: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    peak = peaks.get(res.precision, peaks["fp32"])
    peak_name = res.precision if res.precision in peaks else "fp32"

    # Achieved ------------------------------------------------------------------------------------------------
    rates: dict[str, dict[str, list[float]]] = {m: {"engine": [], "bare": []} for m in models}
    shown = switch.label(device)
    if args.from_json:
        src = json.loads(args.from_json.read_text())
        for m in models:
            row = src["models"].get(m)
            if row is None:
                print(f"  {m}: not in {args.from_json}; not measured", file=sys.stderr)
                continue
            sname = row["summary"].get("engine_default_switch") if switch == common.Switch() else switch.name
            rates[m]["engine"] = list(row["engine"].get(sname, [])) if sname else []
            if sname and switch == common.Switch():  # the figures are the switch that was the default there
                shown = f"{sname} (the default where {args.from_json.name} was measured)"
            rates[m]["bare"] = list(row["bare"].get(switch.name, []))
        print(f"images/s taken from {args.from_json}")
    else:
        log_base = args.log_every or (50 if device.type == "cuda" else 10)
        macs_min = min(c["total"] for c in costs.values())
        for m in models:
            le = common.scaled_log_every(log_base, costs[m]["total"], macs_min)
            for rep in range(args.repeats):
                if not args.no_engine:
                    r = common.engine_run(m, switch, args, log_every=le, intervals=args.intervals,
                                          batch_size=args.batch_size)
                    rates[m]["engine"].append(r["images_per_second"])
                rates[m]["bare"].append(common.bare_run(m, switch, device, warmup=le, iters=le * args.intervals,
                                                        batch_size=args.batch_size))
                print(f"  [{m} rep {rep + 1}] engine "
                      f"{rates[m]['engine'][-1] if rates[m]['engine'] else float('nan'):8.1f}  bare step "
                      f"{rates[m]['bare'][-1]:8.1f} img/s", flush=True)

    print()
    print(f"achieved, switch {shown}, against the {peak_name} peak {peak / 1e9:.1f} GFLOP/s "
          f"(images/s medians)")
    print(f"{'model':<15} {'GFLOP/img':>9} {'img/s @peak':>11} {'engine img/s':>12} {'GFLOP/s':>8} {'of peak':>8} "
          f"{'bare img/s':>10} {'GFLOP/s':>8} {'of peak':>8}")
    table = {}
    for m in models:
        f = 6 * costs[m]["total"]
        e = statistics.median(rates[m]["engine"]) if rates[m]["engine"] else None
        b = statistics.median(rates[m]["bare"]) if rates[m]["bare"] else None

        def cols(v: float | None, f: int = f) -> str:
            return f"{v:12.1f} {v * f / 1e9:8.1f} {100 * v * f / peak:7.1f}%" if v else f"{'-':>12} {'-':>8} {'-':>8}"

        print(f"{m:<15} {f / 1e9:9.3f} {peak / f:11.0f} {cols(e)} {cols(b)[2:]}")
        table[m] = {"train_flops": f, "engine": e, "bare": b, "engine_fraction": e * f / peak if e else None,
                    "bare_fraction": b * f / peak if b else None, "engine_runs": rates[m]["engine"],
                    "bare_runs": rates[m]["bare"]}
    return common.finish(info, args.json, {"info": info, "flops": costs, "matmul": mm, "peaks": peaks,
                                           "switch": switch.name, "achieved": table}, t_start)


if __name__ == "__main__":
    raise SystemExit(main())
