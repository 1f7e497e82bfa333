"""Host memory: CPU training with glibc malloc's defaults against malloc told to keep freed memory, or huge pages.

Every CPU step allocates and frees the same activations. With glibc's defaults the large ones come from fresh
``mmap`` calls and freed memory goes back to the kernel, so every step faults in and zeroes new pages (thousands
per step). ``keep_freed_memory`` below sets glibc's mmap and trim thresholds (``mallopt``) so that freed memory
stays in the process, what ``LD_PRELOAD``-ing jemalloc or tcmalloc does for PyTorch CPU training. It removes the
faults; whether it makes training faster is what this measures (BENCHMARKS.md, "Host memory": not reliably, so
the engine leaves malloc alone). The setting is process-wide and cannot be undone, so each measurement runs in
its own spawned process, the two settings alternating (system, kept, system, kept, ...) over ``--pairs``.

``--compare thp`` compares the defaults with PyTorch's own switch for transparent huge pages instead:
``THP_MEM_ALLOC_ENABLE=1`` in the environment makes its CPU allocator align blocks of 2 MiB and more to 2 MiB and
``madvise(MADV_HUGEPAGE)`` them, so that the kernel maps them with 2 MiB pages where it is set to ``madvise``
(``/sys/kernel/mm/transparent_hugepage/enabled``): 512 times fewer faults and TLB entries for the large
activations. PyTorch reads the variable once, at its first allocation, so the parent sets it for the child it
spawns; the child reports its anonymous huge-page memory (``AnonHugePages``) to show it took effect.

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
    python3 benchmarks/host_memory.py --compare thp                     # huge pages instead of kept memory
    python3 benchmarks/host_memory.py --switch fp32+cl --pairs 1 --rounds 2 --steps 2 --batch-size 16    # smoke
"""
from __future__ import annotations

import argparse
import ctypes
import os
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


def anon_huge_mib() -> float:
    """This process's anonymous memory mapped with transparent huge pages, MiB (0 where /proc cannot tell)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("AnonHugePages:")), 0.0)
    except OSError:
        return 0.0


def measure(model: str, switch: str, setting: str, args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: images/s and minor page faults per step under one setting (system, kept or thp)."""
    malloc = keep_freed_memory() if setting == "kept" else setting
    if malloc not in ("kept", "system", "thp"):
        raise SystemExit(f"cannot set glibc malloc here ({malloc}); this benchmark needs Linux with glibc")
    if setting == "thp" and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        raise SystemExit("the thp setting needs THP_MEM_ALLOC_ENABLE=1 set before torch starts (the parent sets it)")
    common.apply_threads(args)
    device = common.resolve_device(args.device)
    if args.through == "engine":
        return measure_engine(model, switch, malloc, args)
    step = common.make_bare_step(model, common.parse_switch(switch), device, batch_size=args.batch_size)
    for _ in range(args.warmup):
        step()
    rates, faults = [], []
    for _ in range(args.rounds):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        seconds = common.timed_steps(step, args.steps, device)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / args.steps)
        rates.append(args.batch_size * args.steps / seconds)
    return {"malloc": malloc, "images_per_second": rates, "faults_per_step": faults,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "anon_huge_mib": anon_huge_mib()}


def measure_engine(model: str, switch: str, malloc: str, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` through ``train(cfg)``: its steady-state interval rates; faults per iteration over the run."""
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    r = common.engine_run(model, common.parse_switch(switch), args, log_every=args.steps, intervals=args.rounds,
                          batch_size=args.batch_size)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / r["iters"]
    return {"malloc": malloc, "images_per_second": r["interval_rates"], "faults_per_step": [faults],
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "anon_huge_mib": anon_huge_mib()}


def run_child(args: argparse.Namespace, setting: str) -> dict[str, Any]:
    """``measure`` in a freshly spawned process; for ``thp`` with THP_MEM_ALLOC_ENABLE=1 in its environment only."""
    saved = os.environ.get("THP_MEM_ALLOC_ENABLE")
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1" if setting == "thp" else "0"
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            return pool.submit(measure, args.model, args.switch, setting, args).result()
    finally:
        if saved is None:
            os.environ.pop("THP_MEM_ALLOC_ENABLE", None)
        else:
            os.environ["THP_MEM_ALLOC_ENABLE"] = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="res_se_net20")
    parser.add_argument("--switch", default="default", help="default | PRECISION[+cl|+nchw][+compile]")
    parser.add_argument("--pairs", type=int, default=4, help="alternating (system, other) process pairs")
    parser.add_argument("--compare", choices=["kept", "thp"], default="kept",
                        help="the other setting: malloc keeps freed memory, or PyTorch's transparent huge pages")
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
    other_name = {"kept": "keeping freed memory (mallopt)", "thp": "transparent huge pages (THP_MEM_ALLOC_ENABLE=1)"}
    info = common.header(f"host memory: glibc malloc defaults against {other_name[args.compare]}", device)
    sw = common.parse_switch(args.switch).resolved(device)
    warm = (f"{args.warmup} warm-up steps" if args.through == "bare"
            else f"train(cfg), 1 warm-up interval of {args.steps}")
    print(f"{args.model}, switch {args.switch} (= {sw.name}), batch {args.batch_size}, through {args.through}; each "
          f"process: {warm}, {args.rounds} x {args.steps} timed; {args.pairs} alternating pairs of processes")
    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        for setting in ("system", args.compare):
            r = run_child(args, setting)
            r["pair"] = pair
            runs.append(r)
            print(f"  [pair {pair + 1}] {r['malloc']:<9} {common.fmt_rate(r['images_per_second'])} img/s, "
                  f"{statistics.median(r['faults_per_step']):9.0f} minor faults/step, peak RSS "
                  f"{r['max_rss_mib']:.0f} MiB, huge pages {r['anon_huge_mib']:.0f} MiB", flush=True)
    system = [r for r in runs if r["malloc"] == "system"]
    other_runs = [r for r in runs if r["malloc"] != "system"]
    med = {id(r): statistics.median(r["images_per_second"]) for r in runs}
    paired = [med[id(o)] / med[id(s)] for s, o in zip(system, other_runs)]
    print()
    for name, group in (("system (glibc defaults)", system), (args.compare, other_runs)):
        rates = [med[id(r)] for r in group]
        faults = [statistics.median(r["faults_per_step"]) for r in group]
        rss = [r["max_rss_mib"] for r in group]
        print(f"{name:<24} images/s {common.fmt_rate(rates)}   faults/step {statistics.median(faults):8.0f}   "
              f"peak RSS {statistics.median(rss):6.0f} MiB")
    print(f"{args.compare} / system, per pair: {' '.join(f'{p:.2f}' for p in paired)}; "
          f"median {statistics.median(paired):.2f}x")
    return common.finish(info, args.json, {"info": info, "model": args.model, "switch": sw.name, "runs": runs,
                                           "paired_ratio": paired}, t_start)


if __name__ == "__main__":
    raise SystemExit(main())
