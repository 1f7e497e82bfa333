"""Fused training throughput: aggregate training images/s against group size, per depth and mechanism.

Each case builds a fused group (engine/fused.py) of N members (the families resnet, se_resnet, res_se_net in turn,
seeds 1..N) on the real data, runs the warm-up steps (eager steps and CUDA-graph capture), then times whole
group steps until ``--seconds`` have passed (at least ``--min-steps``). Figures: aggregate images/s, per-member
images/s, the ratio to N = 1 of the same depth and mechanism, and the memory per member: on CUDA the peak
allocated during the case over N; on the CPU, with ``--isolate`` (each case in a fresh process), the growth of the
process's peak resident memory (VmHWM) from after loading the data to the end of the case, over N.

Cases (``--cases``, separated by ";", each MECHANISM:DEPTH:N[,N...]):
    graphs:20:1,2,4,8        CUDA graphs replayed on parallel streams (the CUDA default)
    graphs1s:20:8            the same graphs on one stream (how much the overlap of members adds)
    sequential:20:1,4        members one after another, eager (the CPU default)
    grouped:20:4,12          one network, convolutions grouped over the members (HFTA); compiled as a single run
                             would be (CUDA: torch.compile with CUDA graphs; the CPU: eager here)
    grouped-eager:20:12      the same, never compiled
    procs:20:4               N separate processes started at once, one single-member group each (the naive way)

    python benchmarks/fused_throughput.py --device cpu --cases sequential:20:1,2,4 --data-root ../shared/data/cifar10-jpeg.tar.gz
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import _common as common
from ressenet.engine.config import load_config
from ressenet.engine.fused import FusedGroup, fused_configs
from ressenet.engine.steppers import WARMUP_STEPS
from ressenet.engine.setup import RunData, load_data

FAMILIES = ("resnet", "se_resnet", "res_se_net")


def members(depth: int, n: int) -> list[tuple[str, int]]:
    return [(f"{FAMILIES[i % 3]}{depth}", 1 + i // 3) for i in range(n)]


def base_overrides(args: argparse.Namespace) -> dict[str, object]:
    ov: dict[str, object] = {"run.device": args.device, "optim.batch_size": args.batch_size, "run.progress": "none",
                             "optim.iters": 10 ** 6, "run.log_every": 0, "run.eval_every": 0, "run.ckpt_every": 0}
    if args.data_root:
        ov.update({"data.dataset": "imagefolder", "data.data_root": args.data_root})
    else:
        ov.update({"data.dataset": "synthetic", "data.train_limit": 5000, "data.test_limit": 100})
    if args.precision:
        ov["run.precision"] = args.precision
    if args.device == "cpu":
        ov["run.compile"] = False  # eager: the members' compile time would dominate a short benchmark
    return ov


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (Linux VmHWM), MiB; NaN where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def time_group(args: argparse.Namespace, mechanism: str, depth: int, n: int, data: RunData) -> dict[str, float]:
    parallel = mechanism != "graphs1s"
    mech = {"graphs1s": "graphs", "grouped-eager": "grouped"}.get(mechanism, mechanism)
    overrides = base_overrides(args) | ({"run.compile": False} if mechanism.endswith("-eager") else {})
    with tempfile.TemporaryDirectory() as tmp:
        mem = members(depth, n)
        cfgs = []
        for model, seed in mem:
            cfgs += fused_configs(overrides, [model], [seed], tmp)
        cuda = args.device.startswith("cuda")
        if cuda:
            gc.collect()  # the previous case's graphs and pools must be gone from the baseline
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated()
        group = FusedGroup(cfgs, mechanism=mech, data=data, parallel_streams=parallel)
        for _ in range(WARMUP_STEPS + 3):
            group.step()
        group.sync()
        steps, t0 = 0, time.perf_counter()
        while steps < args.min_steps or time.perf_counter() - t0 < args.seconds:
            group.step()
            steps += 1
            if steps % 10 == 0:
                group.sync()
        group.sync()
        dt = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() - base_mem) / 2 ** 20 if cuda else \
            (peak_rss_mib() - args.rss_base if args.rss_base is not None else float("nan"))
        del group
        gc.collect()
    agg = n * args.batch_size * steps / dt
    return {"images_per_second": agg, "per_member": agg / n, "steps": steps, "seconds": dt,
            "mib_per_member": peak / n}


def child_command(args: argparse.Namespace, start_at: float, case: str) -> list[str]:
    """A process that runs one case, starting to time it at the wall-clock time ``start_at``."""
    cmd = [sys.executable, __file__, "--child", str(start_at), "--device", args.device, "--batch-size",
           str(args.batch_size), "--seconds", str(args.seconds), "--min-steps", str(args.min_steps), "--cases", case]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    if args.precision:
        cmd += ["--precision", args.precision]
    return cmd


def run_isolated(args: argparse.Namespace, mech: str, depth: int, n: int) -> dict[str, float]:
    """One case in a fresh process (``--isolate``)."""
    out = subprocess.run(child_command(args, 0.0, f"{mech}:{depth}:{n}"), stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_procs(args: argparse.Namespace, depth: int, n: int) -> dict[str, float]:
    """N processes at once, each a one-member group; they start timing together at a shared wall-clock time."""
    start_at = time.time() + 15 + 2 * n
    mech = "graphs" if args.device.startswith("cuda") else "sequential"
    procs = [subprocess.Popen(child_command(args, start_at, f"{mech}:{depth}:1"), stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        rates.append(json.loads(out.strip().splitlines()[-1])["images_per_second"])
    agg = sum(rates)
    return {"images_per_second": agg, "per_member": agg / n, "steps": 0, "seconds": 0.0, "mib_per_member": float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cases", default="graphs:20:1,2,4,8,16")
    ap.add_argument("--data-root", default=None, help="image-folder archive (default: synthetic images)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per case")
    ap.add_argument("--min-steps", type=int, default=10)
    ap.add_argument("--deadline", type=float, default=0, help="start no case after this many seconds")
    ap.add_argument("--json", default=None)
    ap.add_argument("--isolate", action="store_true",
                    help="run each case in a fresh process (the CPU's memory per member needs it)")
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    t_begin = time.perf_counter()
    data = load_data(load_config(None, base_overrides(args)))
    # In a child (one case per process) the peak resident memory after loading the data is the case's baseline.
    args.rss_base = peak_rss_mib() if args.child is not None and args.device == "cpu" else None
    cases = []
    for spec in args.cases.split(";") if ";" in args.cases else [args.cases]:
        mech, depth, sizes = spec.split(":")
        cases += [(mech, int(depth), int(n)) for n in sizes.split(",")]
    if args.child is not None:  # one process of a `procs` case
        mech, depth, n = cases[0]
        time.sleep(max(0.0, args.child - time.time()))
        print(json.dumps(time_group(args, mech, depth, n, data)))
        return 0
    info = {"command": " ".join([Path(sys.executable).name] + sys.argv), "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
            "threads": torch.get_num_threads(), "cores": os.cpu_count(), "batch_size": args.batch_size,
            "data": data.train.description}
    print(f"fused training throughput on {info['device']} ({info['data']}), batch {args.batch_size} per member")
    print(f"{'mechanism':<11}{'depth':>6}{'N':>4}{'images/s':>12}{'per member':>12}{'x N=1':>8}{'MiB/member':>12}")
    results, first = [], {}
    for mech, depth, n in cases:
        if args.deadline and time.perf_counter() - t_begin > args.deadline:
            print(f"{mech:<11}{depth:>6}{n:>4}  skipped (--deadline {args.deadline:.0f} s)")
            continue
        try:
            if mech == "procs":
                r = run_procs(args, depth, n)
            elif args.isolate:
                r = run_isolated(args, mech, depth, n)
            else:
                r = time_group(args, mech, depth, n, data)
        except Exception as e:  # report and go on: one failing case must not hide the others
            print(f"{mech:<11}{depth:>6}{n:>4}  failed: {type(e).__name__}: {e}")
            continue
        key = (mech, depth)
        first.setdefault(key, r["images_per_second"] / n if n == 1 else None)
        base = first.get(key)
        ratio = r["images_per_second"] / base if base else float("nan")
        print(f"{mech:<11}{depth:>6}{n:>4}{r['images_per_second']:>12,.0f}{r['per_member']:>12,.0f}{ratio:>8.2f}"
              f"{r['mib_per_member']:>12,.0f}", flush=True)
        results.append({"mechanism": mech, "depth": depth, "members": n, **r, "x_single": ratio})
        # After every case: a run killed at its time limit (fused_gpu.sh) keeps the cases it measured.
        common.write_json(args.json, {"info": info, "results": results}, announce=False)
    if args.device == "cpu":
        info["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    common.write_json(args.json, {"info": info, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
