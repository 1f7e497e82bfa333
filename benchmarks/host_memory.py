"""Host memory: CPU training with glibc malloc's defaults against malloc told to keep freed memory.

Every CPU step allocates and frees the same activations. With glibc's defaults the large ones come from fresh
``mmap`` calls and freed memory goes back to the kernel, so every step faults in and zeroes new pages (thousands
per step). ``keep_freed_memory`` below sets glibc's mmap and trim thresholds (``mallopt``) so that freed memory
stays in the process, what ``LD_PRELOAD``-ing jemalloc or tcmalloc does for PyTorch CPU training. It removes the
faults; whether it makes training faster is what this measures (BENCHMARKS.md, "Host memory": not reliably, so
the engine leaves malloc alone). The setting is process-wide and cannot be undone, so each measurement runs in
its own spawned process, the two settings alternating (system, kept, system, kept, ...) over ``--pairs``.

``--through bare`` (default): each process builds the bare step (forward, backward, SGD on one fixed batch,
``_common.make_bare_step``) under ``--switch``, warms it up (compilation included), then times ``--rounds``
blocks of ``--steps`` steps and counts the minor page faults (``getrusage``, all threads) per step.
``--through engine``: each process runs ``train(cfg)`` itself (``_common.engine_run``: data pipeline included,
``--rounds`` timed intervals of ``--steps`` iterations after one warm-up interval); faults are counted over the
whole run (compilation and start-up included) per iteration.

It prints per process the median images/s, faults per step and the peak resident set; then the per-pair ratios
(kept / system) and their median::

    python3 benchmarks/host_memory.py                                   # res_se_net20, default switch, 4 pairs
    python3 benchmarks/host_memory.py --through engine --rounds 6 --steps 10
    python3 benchmarks/host_memory.py --switch fp32+cl --pairs 1 --rounds 2 --steps 2 --batch-size 16    # smoke
"""
from __future__ import annotations

import argparse
import ctypes
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common


def keep_freed_memory() -> str:
    """Sets glibc malloc's mmap threshold (blocks up to 1 GiB come from the heap; 32 MiB where an older glibc
    refuses more) and trim threshold (1 GiB kept at the heap's top). Returns "kept", or why not."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mmap_ok = any(mallopt(m_mmap_threshold, v) == 1 for v in (1 << 30, 32 << 20))
    return "kept" if mmap_ok and mallopt(m_trim_threshold, 1 << 30) == 1 else "refused"


def measure(model: str, switch: str, kept: bool, args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: images/s and minor page faults per step under one malloc setting."""
    malloc = keep_freed_memory() if kept else "system"
    if malloc not in ("kept", "system"):
        raise SystemExit(f"cannot set glibc malloc here ({malloc}); this benchmark needs Linux with glibc")
    common.apply_threads(args)
    device = common.resolve_device(args.device)
    if args.through == "engine":
        return measure_engine(model, switch, kept, args)
    step = common.make_bare_step(model, common.parse_switch(switch), device, batch_size=args.batch_size)
    for _ in range(args.warmup):
        step()
    rates, faults = [], []
    for _ in range(args.rounds):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds = common.timed_steps(step, args.steps, device)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / args.steps)
        rates.append(args.batch_size * args.steps / seconds)
    return {"malloc": malloc, "images_per_second": rates,
            "faults_per_step": faults, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_engine(model: str, switch: str, kept: bool, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` through ``train(cfg)``: its steady-state interval rates; faults per iteration over the run."""
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    r = common.engine_run(model, common.parse_switch(switch), args, log_every=args.steps, intervals=args.rounds,
                          batch_size=args.batch_size)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / r["iters"]
    return {"malloc": "kept" if kept else "system", "images_per_second": r["interval_rates"],
            "faults_per_step": [faults], "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="res_se_net20")
    parser.add_argument("--switch", default="default", help="default | PRECISION[+cl|+nchw][+compile]")
    parser.add_argument("--pairs", type=int, default=4, help="alternating (system, kept) process pairs")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per process (compilation included)")
    parser.add_argument("--rounds", type=int, default=5, help="timed blocks per process")
    parser.add_argument("--steps", type=int, default=8, help="steps per timed block")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--through", choices=["bare", "engine"], default="bare",
                        help="time the bare step, or train(cfg) with its data pipeline")
    common.add_data_args(parser)
    args = parser.parse_args()
    common.apply_threads(args)
    device = common.resolve_device(args.device)
    info = common.header("host memory: glibc malloc defaults against keeping freed memory (mallopt)", device)
    sw = common.parse_switch(args.switch).resolved(device)
    warm = (f"{args.warmup} warm-up steps" if args.through == "bare"
            else f"train(cfg), 1 warm-up interval of {args.steps}")
    print(f"{args.model}, switch {args.switch} (= {sw.name}), batch {args.batch_size}, through {args.through}; each "
          f"process: {warm}, {args.rounds} x {args.steps} timed; {args.pairs} alternating pairs of processes")
    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        for kept in (False, True):
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                r = pool.submit(measure, args.model, args.switch, kept, args).result()
            r["pair"] = pair
            runs.append(r)
            print(f"  [pair {pair + 1}] malloc {r['malloc']:<9} {common.fmt_rate(r['images_per_second'])} img/s, "
                  f"{statistics.median(r['faults_per_step']):9.0f} minor faults/step, peak RSS "
                  f"{r['max_rss_mib']:.0f} MiB", flush=True)
    system = [r for r in runs if r["malloc"] == "system"]
    kept_runs = [r for r in runs if r["malloc"] != "system"]
    med = {id(r): statistics.median(r["images_per_second"]) for r in runs}
    paired = [med[id(k)] / med[id(s)] for s, k in zip(system, kept_runs)]
    print()
    for name, group in (("system (glibc defaults)", system), (f"kept ({kept_runs[0]['malloc']})", kept_runs)):
        rates = [med[id(r)] for r in group]
        faults = [statistics.median(r["faults_per_step"]) for r in group]
        rss = [r["max_rss_mib"] for r in group]
        print(f"{name:<24} images/s {common.fmt_rate(rates)}   faults/step {statistics.median(faults):8.0f}   "
              f"peak RSS {statistics.median(rss):6.0f} MiB")
    print(f"kept / system, per pair: {' '.join(f'{p:.2f}' for p in paired)}; median {statistics.median(paired):.2f}x")
    return common.finish(info, args.json, {"info": info, "model": args.model, "switch": sw.name, "runs": runs,
                                           "paired_ratio": paired}, t_start)


if __name__ == "__main__":
    raise SystemExit(main())
