"""Steady-state training images/s through ressenet's engine, against a pipeline written like the paper's released code.

Three figures per model, measured alternating (A, B, C, A, B, C, ...) over ``--repeats``:

* **engine**: ``ressenet.engine.train.train(cfg)`` itself on a short run (data pipeline, loss bookkeeping, logging
  included), once per switch (``--switches``: precision, channels-last, torch.compile). Its figure is the run's
  ``summary.json`` ``train_images_per_second``: every logging interval but the first (start-up, compilation,
  cache warm-up), no evaluation or checkpoint inside. The per-interval rates are kept in ``--json``.
* **reference**: the paper's released training loop: a map-style dataset of PIL images (as
  ``torchvision.datasets.CIFAR10`` serves them) with per-sample ``RandomCrop(32, padding=4),
  RandomHorizontalFlip(), ToTensor(), Normalize(paper mean/std)`` in a ``DataLoader(batch 128, shuffle=True,
  num_workers=2)``, an eager NCHW float32 model, cross-entropy, SGD (momentum 0.9, weight decay 1e-4), and
  ``loss.item()`` plus a top-1/top-5 computation every step, as its ``AverageMeter`` bookkeeping does. It runs
  in its own spawned process (idle while the others run), as the released script runs in its own: it shares no
  heap, allocator state or compiled code with the engine's runs.
* **bare step**: forward, backward and SGD step of the same model on one fixed synthetic batch, no data at all:
  the ceiling the engine can approach (its ``--bare`` switch; by default the engine's default switch only).

All use the same images (the CIFAR-10 JPEG copy by default, decoded once into ressenet's cache) and batch 128.
Iterations per run are scaled by each model's forward MACs so every run takes about as long as the cheapest
model's: that model runs ``--log-every`` iterations per logging interval, a model with k times its MACs about
``--log-every / k`` (at least 1); each run has one warm-up interval and ``--intervals`` timed ones.

torchvision (for the reference) does not import beside the project's torch 2.13.0 CPU build, so run this from
the benchmark venv (the engine is installed there too)::

    .venv-bench/bin/python benchmarks/train_throughput.py                         # the full matrix
    .venv-bench/bin/python benchmarks/train_throughput.py --models res_se_net20 --switches default --repeats 5
    python3 benchmarks/train_throughput.py --reference-models none                # engine only, no torchvision

Measurement helpers (header, switches, engine and bare-step runs) live in ``_common.py``, shared with the other
benchmarks in this folder.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common


class Reference:
    """The paper's released training loop (PyTorch 0.4-era CIFAR code), on today's PyTorch.

    Kept as the released script builds it: ``DataLoader(trainset, batch_size=128, shuffle=True,
    num_workers=workers)`` without persistent workers, pinned memory or dropped last batch, a fresh iterator
    (fresh worker processes) per timed run; eager NCHW float32 model; per step ``loss.item()`` and top-1/top-5.
    """

    def __init__(self, model_name: str, data: common.RunData, device: torch.device, *, batch_size: int = 128,
                 workers: int = 2, seed: int = 12) -> None:
        from torchvision import transforms

        from ressenet.models import create_model

        ds = data.train
        transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(data.mean, data.std),
        ])
        images = ds.images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 32, 32, 3) uint8, as CIFAR10.data
        self.dataset = common.PILImages(images, ds.labels.numpy(), transform)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, shuffle=True,
                                                  num_workers=workers)
        self.device = device
        torch.manual_seed(seed)
        self.model = create_model(model_name, num_classes=len(ds.classes)).to(device)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def run(self, *, warmup: int, iters: int) -> float:
        """Images/s over ``iters`` steps after ``warmup`` untimed ones (worker start-up falls in the warm-up)."""
        model, it = self.model, iter(self.loader)
        model.train()
        images, t0 = 0, time.perf_counter()
        for i in range(warmup + iters):
            if i == warmup:
                common.sync(self.device)
                images, t0 = 0, time.perf_counter()
            try:
                inputs, targets = next(it)
            except StopIteration:
                it = iter(self.loader)
                inputs, targets = next(it)
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            outputs = model(inputs)
            loss = self.criterion(outputs, targets)
            prec1, prec5 = common.accuracy(outputs.data, targets.data, topk=(1, 5))
            _ = (loss.item(), prec1.item(), prec5.item())  # AverageMeter.update(...) in the released loop
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            images += inputs.size(0)
        common.sync(self.device)
        rate = images / (time.perf_counter() - t0)
        del it  # shuts its worker processes down, so they do not compete with the next measurement
        return rate


def _reference_server(conn: Any, model_name: str, args: argparse.Namespace) -> None:
    """Child process: builds one ``Reference`` and answers ``(warmup, iters)`` requests with its images/s."""
    common.apply_threads(args)
    device = common.resolve_device(args.device)
    ref = Reference(model_name, common.load_engine_data(args), device, batch_size=args.batch_size,
                    workers=args.workers)
    conn.send("ready")
    try:
        while (msg := conn.recv()) is not None:
            conn.send(ref.run(warmup=msg[0], iters=msg[1]))
    except EOFError:  # the parent is gone
        pass


class ReferenceProcess:
    """The reference loop in its own fresh (spawned) Python process, as the released script runs.

    The child builds its model and data once and waits on a pipe between measurements, so it takes no CPU while
    the engine runs; its model keeps training from one measurement to the next, as before.
    """

    def __init__(self, model_name: str, args: argparse.Namespace) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # Not a daemon: its DataLoader starts worker processes. It exits when the pipe closes.
        self.proc = ctx.Process(target=_reference_server, args=(child, model_name, args))
        self.proc.start()
        if self.conn.recv() != "ready":
            raise RuntimeError("reference process failed to start")

    def run(self, *, warmup: int, iters: int) -> float:
        self.conn.send((warmup, iters))
        return float(self.conn.recv())

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=60)


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------
def default_switches(device: torch.device) -> str:
    if device.type == "cuda":
        return "fp32,fp32+cl,bf16+cl,bf16+cl+compile+ro"
    return "fp32,fp32+cl,bf16+cl,fp32+cl+compile"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default=common.DEFAULT_MODELS, help="comma-separated registry names")
    parser.add_argument("--switches", default=None,
                        help="comma-separated: default | PRECISION[+cl|+nchw][+compile]; default on the CPU "
                             f"{default_switches(torch.device('cpu'))!r}, on CUDA "
                             f"{default_switches(torch.device('cuda'))!r}")
    parser.add_argument("--reference-models", default="res_se_net20",
                        help="models also timed through the released-code pipeline: names, 'all' or 'none'")
    parser.add_argument("--bare", choices=["default", "all", "none"], default="default",
                        help="time the bare step (synthetic batch) for the engine's default switch, every switch, "
                             "or none")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader worker processes")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=None,
                        help="iterations per interval for the cheapest model (default: 10 on the CPU, 50 on CUDA)")
    parser.add_argument("--intervals", type=int, default=6, help="timed intervals per run (after 1 warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported")
    parser.add_argument("--deadline", type=float, default=0,
                        help="seconds after start past which no further run is started (0 = none); skipped runs "
                             "are reported")
    common.add_data_args(parser)
    args = parser.parse_args()
    common.apply_threads(args)

    device = common.resolve_device(args.device)
    models = common.parse_list(args.models)
    switches = [common.parse_switch(s) for s in common.parse_list(args.switches or default_switches(device))]
    ref_models = models if args.reference_models == "all" else (
        [] if args.reference_models == "none" else common.parse_list(args.reference_models))
    default_sw = common.Switch().resolved(device)
    log_base = args.log_every or (50 if device.type == "cuda" else 10)

    info = common.header("training throughput: engine vs the released-code pipeline", device,
                         with_torchvision=bool(ref_models))
    t_start = time.perf_counter()
    costs = {m: common.train_flops_per_image(m) for m in models}
    macs_min = min(c[0] for c in costs.values())
    data = common.load_engine_data(args)
    print(f"data: {data.train.description}: {len(data.train)} training images; batch {args.batch_size}; "
          f"engine default on {device.type}: {default_sw.name}; reference in its own process")
    print(f"each run: 1 warm-up + {args.intervals} timed intervals of {log_base} iterations for the cheapest model "
          f"(fewer for costlier ones, by forward MACs); {args.repeats} alternating repeats; "
          f"figures: images/s, median (min..max)")
    sys.stdout.flush()

    results: dict[str, Any] = {"info": info, "models": {}}
    skipped: list[str] = []

    def over_deadline() -> bool:
        return bool(args.deadline) and time.perf_counter() - t_start > args.deadline

    for model in models:
        macs, flops = costs[model]
        le = common.scaled_log_every(log_base, macs, macs_min)
        timed = le * args.intervals
        row: dict[str, Any] = {"macs": macs, "train_flops": flops, "log_every": le,
                               "engine": {s.name: [] for s in switches}, "engine_runs": {s.name: [] for s in switches},
                               "reference": [], "bare": {}}
        ref = None
        if model in ref_models:
            ref = ReferenceProcess(model, args)
        bare_switches = [] if args.bare == "none" else (switches if args.bare == "all" else [common.Switch()])
        for s in bare_switches:
            row["bare"][s.name] = []
        for rep in range(args.repeats):
            for s in switches:
                if over_deadline():
                    skipped.append(f"{model} {s.name} repeat {rep + 1}")
                    continue
                r = common.engine_run(model, s, args, log_every=le, intervals=args.intervals,
                                      batch_size=args.batch_size)
                row["engine"][s.name].append(r["images_per_second"])
                row["engine_runs"][s.name].append(r)
                print(f"  [{model} rep {rep + 1}] engine {s.label(device):<24} {r['images_per_second']:9.1f} img/s "
                      f"(run {r['wall_seconds']:.1f} s)", flush=True)
            if ref is not None and not over_deadline():
                rate = ref.run(warmup=le, iters=timed)
                row["reference"].append(rate)
                print(f"  [{model} rep {rep + 1}] reference (released-code loop)  {rate:9.1f} img/s", flush=True)
            for s in bare_switches:
                if over_deadline():
                    continue
                rate = common.bare_run(model, s, device, warmup=le, iters=timed, batch_size=args.batch_size)
                row["bare"][s.name].append(rate)
                print(f"  [{model} rep {rep + 1}] bare step {s.label(device):<21} {rate:9.1f} img/s", flush=True)
        if ref is not None:
            ref.close()
        results["models"][model] = row

    # Table ---------------------------------------------------------------------------------------------------
    print()
    print(f"{'model':<15} {'GFLOP/img':>9}  {'pipeline / switch':<32} {'images/s median (min..max)':>28} "
          f"{'x reference':>11} {'/ bare step':>11}")
    for model, row in results["models"].items():
        ref_med = statistics.median(row["reference"]) if row["reference"] else None
        bare_default = row["bare"].get("default") or []
        bare_med = statistics.median(bare_default) if bare_default else None
        first = True
        lines = []
        for s in switches:
            vals = row["engine"][s.name]
            med = statistics.median(vals) if vals else None
            is_default = s.resolved(device) == default_sw
            ratio = f"{med / ref_med:10.2f}x" if med and ref_med else f"{'-':>11}"
            same_bare = row["bare"].get(s.name) or (bare_default if is_default else [])
            vs_bare = f"{med / statistics.median(same_bare):10.2f} " if med and same_bare else f"{'-':>11}"
            name = "engine " + s.label(device) + (" *" if is_default else "")
            lines.append((name, common.fmt_rate(vals), ratio, vs_bare))
        if row["reference"]:
            lines.append(("reference (released loop)", common.fmt_rate(row["reference"]), f"{1:10.2f}x", f"{'-':>11}"))
        for sname, vals in row["bare"].items():
            if vals:
                r = f"{statistics.median(vals) / ref_med:10.2f}x" if ref_med else f"{'-':>11}"
                lines.append((f"bare step {sname}" + (f" (= {common.Switch().resolved(device).name})"
                                                       if sname == "default" else ""),
                              common.fmt_rate(vals), r, f"{'-':>11}"))
        for name, rate, ratio, vs_bare in lines:
            lead = f"{model:<15} {row['train_flops'] / 1e9:9.3f}" if first else f"{'':<15} {'':>9}"
            print(f"{lead}  {name:<32} {rate:>28} {ratio:>11} {vs_bare:>11}")
            first = False
        dflt = next((s.name for s in switches if s.resolved(device) == default_sw and row["engine"][s.name]), None)
        # Each repeat runs the engine and the reference back to back, so their ratio within a repeat shares the
        # machine's state of the moment; the median of those paired ratios is the steadier figure on a busy host.
        paired = [e / r for e, r in zip(row["engine"][dflt], row["reference"])] if dflt else []
        if paired:
            print(f"{'':<15} {'':>9}  paired (engine default / reference, same repeat): "
                  f"{' '.join(f'{p:.2f}' for p in paired)}; median {statistics.median(paired):.2f}x")
        row["summary"] = {
            "engine": {k: common.summary_stats(v) for k, v in row["engine"].items() if v},
            "reference": common.summary_stats(row["reference"]) if row["reference"] else None,
            "bare": {k: common.summary_stats(v) for k, v in row["bare"].items() if v},
            "engine_default_switch": dflt,
            "engine_default_over_reference":
                statistics.median(row["engine"][dflt]) / ref_med if dflt and ref_med else None,
            "engine_default_over_reference_paired": paired,
            "engine_default_over_bare":
                statistics.median(row["engine"][dflt]) / bare_med if dflt and bare_med else None,
        }
    print("* = the engine's default switch on this device; 'x reference' = median / reference median; "
          "'/ bare step' = engine median / bare-step median for the same switch")
    if skipped:
        print(f"skipped by --deadline {args.deadline:g} s: {'; '.join(skipped)}")
    results["skipped"] = skipped
    return common.finish(info, args.json, results, t_start)


if __name__ == "__main__":
    raise SystemExit(main())
