"""Aggregate training images/s of a CPU grid: the grid's CPU default against the earlier one, side by side.

A grid on a CPU runs several cells; what counts is the images/s of all of its processes together. Two settings:

* **new** (today's default): ``ressenet grid --jobs auto`` (one single-threaded process per usable core), each
  training at ``--precision auto`` and compile auto, resolved as for a full-length run (``Switch.resolved``): bf16
  autocast, eager, on a CPU with native bf16 arithmetic; fp32, compiled where a C++ compiler is found, elsewhere;
* **old**: one process with one thread per core, fp32, compiled (``torch.compile``, Inductor's C++ kernels).

Each process builds its run as ``ressenet train`` does (``Run.build``: the model, SGD, the engine's ``TrainLoader``
on real data, channels-last) and steps it (``Run.step``: lr, augmentation, forward, backward, SGD). After warm-up
steps (compilation included) all processes of a setting wait at one barrier, then count the steps they finish in
the same window of wall time, so every figure is measured with all of the setting's processes training. Rounds
alternate old and new, so the machine's drift hits both; the ratio is the median of the per-round ratios.

    python benchmarks/cpu_grid.py --data-root ../shared/data/cifar10-jpeg.tar.gz   # ~5 min on 2 cores, quiet
    python benchmarks/cpu_grid.py --new-switch fp32+cl+compile   # the default of a CPU without native bf16
    python benchmarks/cpu_grid.py --model res_se_net56 --compare-compile   # compiled bf16 against eager bf16

``--compare-compile`` times another pair in the grid's own layout (one single-threaded process per core, both
sides): **eager** bf16 channels-last against **compiled** bf16 channels-last, and prints compiled / eager (the
median of the per-round ratios), each side's median images/s, the compilation's extra warm-up and what compiling
saves or costs over a run of ``--run-iters`` iterations (8,000: the compressed presets) per process. The figure
that decides a preset's ``compile:`` and the resolver's table of measured facts (``engine/measured.py``).

Stop a running grid first (SIGTERM to it and its trainers): a figure timed beside it is void.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import torch  # noqa: E402


def _worker(conn: Any, barrier: Any, model: str, switch: common.Switch, threads: int, overrides: dict[str, Any],
            warmup: int, seconds: float, seed: int) -> None:
    """One grid process: builds a run, warms up, waits for the others, counts steps in the window."""
    torch.set_num_threads(threads)
    from ressenet.engine.config import load_config
    from ressenet.engine.run import Run
    from ressenet.engine.setup import load_data, resolve_settings

    import dataclasses
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="ressenet-cpu-grid-") as tmp:
            cfg = load_config(None, overrides | {
                "model.name": model, "run.out": tmp, "run.seed": seed, "run.device": "cpu",
                "run.precision": switch.precision, "run.channels_last": switch.channels_last,
                "run.compile": switch.compile, "run.progress": "none"})
            data = load_data(cfg)
            settings = resolve_settings(cfg, torch.device("cpu"), data, {})
            # Compiled only when the switch asks: the engine's auto would compile this long a run.
            settings = dataclasses.replace(settings, compile=settings.compile if switch.compile else False)
            run = Run.build(cfg, Path(tmp), data, settings)
            t0 = time.perf_counter()
            for _ in range(warmup):
                run.step()
            run.acc.sum().item()  # the host waits for the warm-up's work
            warm = time.perf_counter() - t0
            barrier.wait()
            start = time.perf_counter()
            steps = 0
            while time.perf_counter() - start < seconds:
                run.step()
                steps += 1
            run.acc.sum().item()
            elapsed = time.perf_counter() - start
            conn.send({"ok": True, "images_per_second": steps * cfg.optim.batch_size / elapsed, "steps": steps,
                       "warmup_seconds": warm})
    except BaseException as e:  # reported by the parent; a broken barrier releases the others
        barrier.abort()
        conn.send({"ok": False, "error": f"{type(e).__name__}: {e}"})


def measure(name: str, switch: common.Switch, procs: int, threads: int, args: argparse.Namespace,
            models: list[str], round_index: int) -> dict[str, Any]:
    """One setting once: ``procs`` processes of ``threads`` threads each, started together."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    overrides = common.data_overrides(args) | {"optim.iters": 10 ** 6, "optim.batch_size": args.batch_size}
    pipes, workers = [], []
    for i in range(procs):
        parent, child = ctx.Pipe(duplex=False)
        w = ctx.Process(target=_worker, args=(child, barrier, models[i % len(models)], switch, threads, overrides,
                                              args.warmup, args.seconds, i), daemon=True)
        w.start()
        pipes.append(parent)
        workers.append(w)
    results = [p.recv() for p in pipes]
    for w in workers:
        w.join()
    bad = [r["error"] for r in results if not r["ok"]]
    if bad:
        raise SystemExit(f"{name}: a process failed: {bad[0]}")
    rates = [r["images_per_second"] for r in results]
    total = sum(rates)
    print(f"  round {round_index + 1} {name:4s}: {total:7.1f} images/s in all ({procs} x {threads} thread(s); per "
          f"process {', '.join(f'{r:.0f}' for r in rates)}; warm-up {max(r['warmup_seconds'] for r in results):.0f} s)",
          flush=True)
    return {"aggregate": total, "per_process": rates, "warmup_seconds": [r["warmup_seconds"] for r in results]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_data_args(p)
    p.add_argument("--models", default="res_se_net20",
                   help="comma list; the processes of a setting cycle through it (default res_se_net20)")
    p.add_argument("--model", default=None,
                   help="one model for every process (e.g. res_se_net56); overrides --models")
    p.add_argument("--compare-compile", action="store_true",
                   help="time eager against compiled (both --precision, channels-last, one 1-thread process per "
                        "core) instead of the grid default against fp32 compiled")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                   help="with --compare-compile: the precision of both sides (default bf16)")
    p.add_argument("--run-iters", type=int, default=8000,
                   help="with --compare-compile: the run length the compilation's cost is spread over (8,000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=8, help="steps before the window (compilation happens here)")
    p.add_argument("--seconds", type=float, default=30.0, help="the timed window of each setting, each round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the two settings, alternating")
    p.add_argument("--cores", type=int, default=0, help="cores to use (default: the usable ones, as --jobs auto)")
    p.add_argument("--new-switch", default=None, metavar="SWITCH",
                   help="the one-process-per-core setting's switch instead of the grid default's, e.g. "
                        "fp32+cl+compile: what the default resolves to on a CPU without native bf16")
    p.add_argument("--old-switch", default="fp32+cl+compile", metavar="SWITCH",
                   help="the one-process setting's switch (default fp32+cl+compile, the earlier default); e.g. "
                        "fp32+cl for a quick check that compiles nothing")
    args = p.parse_args()
    from ressenet.experiments.runner import usable_cores

    device = torch.device("cpu")
    info = common.header("CPU grid: aggregate training images/s, "
                         + (f"{args.precision} compiled against eager" if args.compare_compile
                            else "grid default against fp32 compiled"), device)
    t_start = time.perf_counter()
    cores = args.cores or usable_cores()
    import torch.cpu as tcpu

    from ressenet.engine.setup import cpu_has_native_bf16

    flags = {n: bool(getattr(tcpu, n)()) for n in ("_is_avx2_supported", "_is_avx512_supported",
                                                     "_is_avx512_bf16_supported", "_is_amx_tile_supported")
             if hasattr(tcpu, n)}
    shown = ", ".join(k.removeprefix("_is_").removesuffix("_supported") for k, v in flags.items() if v)
    print(f"cpu flags: {shown}"
          f"; native bf16: {cpu_has_native_bf16()}; {cores} usable cores")
    from ressenet.engine import measured

    features = measured.cpu_features()
    fact = measured.bf16_compile_fact(features)
    print("bf16 features (/proc/cpuinfo, oneDNN cap applied): "
          + (", ".join(sorted(f for f in features if "bf16" in f or f.startswith(("amx", "avx512f", "avx2"))))
             or "none")
          + (f"; ONEDNN_MAX_CPU_ISA={measured._onednn_isa_cap()}" if measured._onednn_isa_cap() else ""))
    print("compile auto for bf16 here follows: "
          + (f"{fact.cpu}, depth {fact.depth}, compiled/eager {fact.ratio:.2f}x "
             f"({'compiles' if fact.pays else 'eager'})" if fact else "no measurement on such a CPU (eager)"))
    flags["features"] = sorted(features)  # type: ignore[assignment]
    models = [args.model] if args.model else common.parse_list(args.models)
    if args.compare_compile:
        precision = args.precision
        a_sw, b_sw = common.Switch(precision, True, False, "default"), common.Switch(precision, True, True, "default")
        settings = {"eager": (a_sw, cores, 1), "compiled": (b_sw, cores, 1)}
        print(f"eager: {cores} processes x 1 thread, {a_sw.name};  compiled: {cores} processes x 1 thread, "
              f"{b_sw.name} (torch.compile, Inductor's C++ kernels); models {', '.join(models)}")
    else:
        new = common.parse_switch(args.new_switch) if args.new_switch else common.Switch().resolved(device)
        old = common.parse_switch(args.old_switch)
        settings = {"old": (old, 1, cores), "new": (new, cores, 1)}
        print(f"old: 1 process x {cores} threads, {old.name};  new: {cores} processes x 1 thread, {new.name} "
              + ("(as given)" if args.new_switch else "(the grid default resolved for a full-length run)"))
    (a, b) = settings
    rows: dict[str, list[dict[str, Any]]] = {a: [], b: []}
    ratios = []
    for r in range(args.rounds):
        order = (a, b) if r % 2 == 0 else (b, a)
        for name in order:
            sw, procs, threads = settings[name]
            rows[name].append(measure(name, sw, procs, threads, args, models, r))
        ratios.append(rows[b][-1]["aggregate"] / rows[a][-1]["aggregate"])
    agg = {k: [m["aggregate"] for m in v] for k, v in rows.items()}
    for name in (a, b):
        sw, procs, threads = settings[name]
        print(f"{name} ({sw.name}, {procs} x {threads} thread(s)): {common.fmt_rate(agg[name])} images/s "
              "(median (min..max))")
    ratio = statistics.median(ratios)
    print(f"{b} / {a}: {ratio:.2f}x (median of {len(ratios)} rounds; {', '.join(f'{x:.2f}' for x in ratios)})")
    payload: dict[str, Any] = {"info": info, "cpu_flags": flags, "cores": cores, "models": models,
                               a: {"switch": settings[a][0].name, "rounds": rows[a]},
                               b: {"switch": settings[b][0].name, "rounds": rows[b]},
                               "ratios": ratios, "ratio_median": ratio}
    if args.compare_compile:
        payload["run_cost"] = run_cost(rows, args.run_iters, args.batch_size)
        c = payload["run_cost"]
        print(f"compilation: {c['extra_warmup_seconds']:.0f} s more warm-up per process (median); over a "
              f"{args.run_iters:,}-iteration run a process spends {c['eager_seconds'] / 60:.1f} min eager against "
              f"{c['compiled_seconds'] / 60:.1f} min compiled: compiling {'pays' if c['pays'] else 'does not pay'} "
              f"({c['saved_seconds'] / 60:+.1f} min saved)")
    return common.finish(info, args.json, payload, t_start)


def run_cost(rows: dict[str, list[dict[str, Any]]], iters: int, batch_size: int) -> dict[str, Any]:
    """What one process spends on ``iters`` training steps eager against compiled: the steps at each side's median
    per-process rate, plus the compiled side's extra warm-up (compilation; the warm-up steps themselves cost both)."""
    per_proc = {k: statistics.median(r for m in v for r in m["per_process"]) for k, v in rows.items()}
    warm = {k: statistics.median(w for m in v for w in m["warmup_seconds"]) for k, v in rows.items()}
    extra = max(0.0, warm["compiled"] - warm["eager"])
    eager = iters * batch_size / per_proc["eager"]
    compiled = iters * batch_size / per_proc["compiled"] + extra
    return {"iters": iters, "per_process_images_per_second": per_proc, "extra_warmup_seconds": extra,
            "eager_seconds": eager, "compiled_seconds": compiled, "saved_seconds": eager - compiled,
            "pays": compiled < eager}

if __name__ == "__main__":
    raise SystemExit(main())
