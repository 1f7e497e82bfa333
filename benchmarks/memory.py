"""Peak resident memory of a CPU training run (whole process), the dataset's share, and growth over the run.

Runs ``python -m ressenet train`` (the real CLI, engine defaults: test evaluation and checkpoint every 1000
iterations) for ``--model`` (res_se_net110) in a child process and samples its ``/proc/<pid>/status`` (VmRSS,
VmHWM) every ``--sample-every`` seconds, together with the last iteration logged to its metrics.jsonl. Reports:

* the whole process's peak resident set: ``ru_maxrss`` of the reaped child (exact), and the largest VmHWM seen;
* the dataset in memory: the train/test ``ImageDataset`` tensors (uint8 pixels, int64 labels) and the
  ``TrainLoader``'s zero-padded + mirrored pixel store (2 x N x 3 x 40 x 40 bytes), computed from the same data;
* growth: resident memory against iteration (interpolated between log lines) from ``--settle`` of the way in to
  the last training log line, as a least-squares slope in MiB per 1000 iterations, and the change between the
  medians of the first and last quarter of that window, and the median (min..max) per ``--window`` iterations
  over the logged span. No growth means a slope within sampling noise.

``--json`` writes these summary figures, the resident set at a quarter, half, three quarters and the end of the
run, and when each log line was first seen; the raw ``/proc`` samples (one every 0.5 s: about 13,000 for the hour's
run, over 1 MB) only with ``--trace``.

The issue's measurement is 2,000 iterations of res_se_net110 (about an hour on a quiet 2-core CPU)::

    python3 benchmarks/memory.py --iters 2000 --json benchmarks/results/memory.json
    python3 benchmarks/memory.py --model resnet20 --iters 4 --log-every 1 --batch-size 16 --train-limit 512  # smoke
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

MIB = 1024 * 1024


def read_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / VmSize of a process in bytes (empty once it has exited)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def last_logged_iter(path: Path) -> int | None:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return None
    for ln in reversed(lines):
        try:
            import json

            return int(json.loads(ln)["iter"])
        except (ValueError, KeyError):
            continue  # a line being written
    return None


def fit_slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def interp(t: float, ts: list[float], vs: list[float]) -> float:
    if t <= ts[0]:
        return vs[0]
    for (t0, v0), (t1, v1) in zip(zip(ts, vs), zip(ts[1:], vs[1:])):
        if t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
    return vs[-1]


def summarize(samples: list[dict[str, Any]], seen: dict[int, float], iters: int, settle: float,
              window: int) -> dict[str, Any]:
    """The run's memory figures from its ``/proc`` samples and log-line times: ``growth`` (empty with under 2 log
    lines or 4 samples in the fit window), ``windows`` (resident MiB per ``window`` iterations, iteration
    interpolated between log lines, from the first log line to the last) and ``marks`` (the first sample at or past
    a quarter, half, three quarters and all of ``iters``)."""
    growth: dict[str, Any] = {}
    windows: list[dict[str, Any]] = []
    if len(seen) >= 2:
        its = sorted(seen)
        ts = [seen[i] for i in its]
        fits = [float(i) for i in its]
        first_it = next((i for i in its if i >= settle * iters), its[0])
        t_lo, t_hi = seen[first_it], seen[its[-1]]
        win = [s for s in samples if t_lo <= s["t"] <= t_hi]
        if len(win) >= 4:
            x = [interp(s["t"], ts, fits) for s in win]
            y = [s["rss"] / MIB for s in win]
            slope = fit_slope(x, y) * 1000
            q = max(1, len(win) // 4)
            change = statistics.median(y[-q:]) - statistics.median(y[:q])
            growth = {"from_iter": first_it, "to_iter": its[-1], "samples": len(win),
                      "slope_mib_per_1000_iters": slope, "first_quarter_median_mib": statistics.median(y[:q]),
                      "last_quarter_median_mib": statistics.median(y[-q:]), "change_mib": change,
                      "min_mib": min(y), "max_mib": max(y)}
        if window > 0:
            last = max(0, (its[-1] - 1) // window)  # the last logged iteration closes the last window
            groups: dict[int, list[float]] = {}
            for s in samples:
                if ts[0] <= s["t"] <= ts[-1]:
                    k = min(int(interp(s["t"], ts, fits) // window), last)
                    groups.setdefault(k, []).append(s["rss"] / MIB)
            windows = [{"from_iter": max(k * window, its[0]), "to_iter": min((k + 1) * window, its[-1]),
                        "samples": len(v), "median_mib": statistics.median(v), "min_mib": min(v), "max_mib": max(v)}
                       for k, v in sorted(groups.items())]
    marks = []
    for frac in (0.25, 0.5, 0.75, 1.0):
        s = next((s for s in samples if s["iter"] is not None and s["iter"] >= frac * iters), None)
        if s:
            marks.append({"fraction": frac, "iter": s["iter"], "t": s["t"], "rss_mib": s["rss"] / MIB})
    return {"growth": growth, "windows": windows, "marks": marks}


def result_json(info: dict[str, Any], cmd: list[str], wall: float, peak: int, hwm: int, ds_bytes: dict[str, int],
                store: int, params: int, summary: dict[str, Any], sample_every: float, window: int,
                samples: list[dict[str, Any]], seen: dict[int, float], trace: bool) -> dict[str, Any]:
    """What ``--json`` writes: the summary figures; the raw samples only with ``trace``."""
    out = {"info": info, "command": cmd, "wall_seconds": wall, "peak_rss_bytes": peak, "max_vmhwm_bytes": hwm,
           "dataset_bytes": ds_bytes, "trainloader_store_bytes": store, "params": params,
           "growth": summary["growth"], "sample_every_seconds": sample_every, "sample_count": len(samples),
           "window_iters": window, "windows": summary["windows"], "marks": summary["marks"],
           "log_seen": {str(k): v for k, v in seen.items()}}
    if trace:
        out["samples"] = samples
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="res_se_net110")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=1000, help="the engine's default")
    parser.add_argument("--ckpt-every", type=int, default=1000, help="the engine's default")
    parser.add_argument("--sample-every", type=float, default=0.5, help="seconds between /proc samples")
    parser.add_argument("--settle", type=float, default=0.1,
                        help="fraction of the iterations left out of the growth fit (start-up)")
    parser.add_argument("--window", type=int, default=250,
                        help="iterations per window of the resident set's median (min..max); 0: none")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directory here (default: a temp dir)")
    parser.add_argument("--trace", action="store_true",
                        help="also write every /proc sample to --json (large: about 100 bytes per sample)")
    common.add_data_args(parser)
    parser.set_defaults(test_limit=0, device="cpu")
    args = parser.parse_args()

    device = common.resolve_device(args.device)
    info = common.header(f"memory: peak resident set and growth of a {args.model} training run", device)
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="ressenet-mem-")
        out = Path(tmp.name) / "run"
    else:
        out = args.out
    ov = common.data_overrides(args)
    cmd = [sys.executable, "-m", "ressenet", "train", "--model", args.model, "--dataset", ov["data.dataset"],
           "--iters", str(args.iters), "--batch-size", str(args.batch_size), "--log-every", str(args.log_every),
           "--eval-every", str(args.eval_every), "--ckpt-every", str(args.ckpt_every), "--progress", "none",
           "--device", args.device, "--out", str(out), "--overwrite",
           "--set", f"data.train_limit={args.train_limit}", "--set", f"data.test_limit={args.test_limit}"]
    if ov["data.data_root"]:
        cmd += ["--data-root", ov["data.data_root"]]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    env = os.environ | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
    print("child: " + " ".join(cmd), flush=True)

    log_path = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    samples: list[dict[str, Any]] = []
    seen: dict[int, float] = {}  # iteration -> parent time when its log line was first seen
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            st = read_status(proc.pid)
            now = time.perf_counter() - t0
            it = last_logged_iter(out / "metrics.jsonl")
            if it is not None and it not in seen:
                seen[it] = now
            if st:
                samples.append({"t": now, "rss": st.get("VmRSS", 0), "hwm": st.get("VmHWM", 0), "iter": it})
            time.sleep(args.sample_every)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(log_path.read_text()[-4000:], file=sys.stderr)
        print(f"the training run failed (exit {proc.returncode}); its log is above", file=sys.stderr)
        return 1

    # Dataset bytes (loaded after the run, so the child had the machine to itself) ---------------------------
    data = common.load_engine_data(args)
    tr, te = data.train, data.test
    ds_bytes = {"train_images": tr.images.nbytes, "train_labels": tr.labels.nbytes,
                "test_images": te.images.nbytes, "test_labels": te.labels.nbytes}
    n, c, h, w = tr.images.shape
    store = 2 * n * c * (h + 8) * (w + 8)
    from ressenet.models import count_params, create_model

    params = count_params(create_model(args.model, num_classes=len(tr.classes)))

    peak = usage.ru_maxrss * 1024  # Linux: kilobytes
    hwm = max((s["hwm"] for s in samples), default=0)
    print()
    print(f"run: {args.iters} iterations of {args.model}, batch {args.batch_size}, {wall:.0f} s, "
          f"{len(samples)} samples every {args.sample_every:g} s")
    print(f"{'quantity':<72} {'MiB':>9}")
    rows = [
        ("peak resident set, whole process (ru_maxrss)", peak),
        ("largest VmHWM sampled", hwm),
        ("dataset tensors: train images + labels", ds_bytes["train_images"] + ds_bytes["train_labels"]),
        ("dataset tensors: test images + labels", ds_bytes["test_images"] + ds_bytes["test_labels"]),
        (f"TrainLoader padded + mirrored store (2 x {n} x {c} x {h + 8} x {w + 8} uint8)", store),
        (f"model parameters + gradients + momentum ({params:,} float32 x 3)", 12 * params),
    ]
    for name, b in rows:
        print(f"{name:<72} {b / MIB:9.1f}")

    summary = summarize(samples, seen, args.iters, args.settle, args.window)
    growth = summary["growth"]
    if growth:
        y_min, y_max, change = growth["min_mib"], growth["max_mib"], growth["change_mib"]
        print()
        print(f"resident set from iteration {growth['from_iter']} to {growth['to_iter']} ({growth['samples']} "
              f"samples): min {y_min:.1f}, max {y_max:.1f} MiB")
        print(f"  slope {growth['slope_mib_per_1000_iters']:+.2f} MiB per 1000 iterations; median of the first quarter "
              f"{growth['first_quarter_median_mib']:.1f} MiB, of the last {growth['last_quarter_median_mib']:.1f} "
              f"MiB (change {change:+.1f} MiB)")
        print("  growth: " + ("none beyond noise" if abs(change) < 0.02 * y_max + 5 else
                              "YES: resident memory rises over the run"))
    elif len(seen) >= 2:
        print("too few samples in the training window to fit a growth slope (run more iterations)")
    if summary["windows"]:
        print()
        print(f"resident set per {args.window} iterations, MiB: median (min..max)")
        for w in summary["windows"]:
            print(f"  iterations {w['from_iter']:>6}-{w['to_iter']:<6} {w['median_mib']:8.1f} "
                  f"({w['min_mib']:.0f}..{w['max_mib']:.0f}), {w['samples']} samples")
    print()
    for m in summary["marks"]:
        print(f"  resident at iteration ~{m['iter']:>6}: {m['rss_mib']:8.1f} MiB (t = {m['t']:.0f} s)")
    print(f"torch {torch.__version__}, threads in the child: torch's default ({os.cpu_count()} cores)"
          if not args.threads else f"OMP_NUM_THREADS={args.threads} in the child")
    common.finish(info, args.json, result_json(info, cmd, wall, peak, hwm, ds_bytes, store, params, summary,
                                               args.sample_every, args.window, samples, seen, args.trace))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
