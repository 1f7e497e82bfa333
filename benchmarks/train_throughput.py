"""Steady-state training images/s through ressenet's engine, against a pipeline written like the paper's released code.

Three figures per model, measured in the same process, alternating (A, B, C, A, B, C, ...) over ``--repeats``:

* **engine**: ``ressenet.engine.train.train(cfg)`` itself on a short run (data pipeline, loss bookkeeping, logging
  included), once per switch (``--switches``: precision, channels-last, torch.compile). Its figure is the run's
  ``summary.json`` ``train_images_per_second``: every logging interval but the first (start-up, compilation,
  cache warm-up), no evaluation or checkpoint inside. The per-interval rates are kept in ``--json``.
* **reference**: the paper's released training loop: a map-style dataset of PIL images (as
  ``torchvision.datasets.CIFAR10`` serves them) with per-sample ``RandomCrop(32, padding=4),
  RandomHorizontalFlip(), ToTensor(), Normalize(paper mean/std)`` in a ``DataLoader(batch 128, shuffle=True,
  num_workers=2)``, an eager NCHW float32 model, cross-entropy, SGD (momentum 0.9, weight decay 1e-4), and
  ``loss.item()`` plus a top-1/top-5 computation every step, as its ``AverageMeter`` bookkeeping does.
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

Helpers here (header, switches, engine/bare/reference runs) are shared by the other benchmarks in this folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

# Where the CIFAR-10 JPEG archive is looked for: the GPU machine's carried copy first, then shared/ beside the repo.
ARCHIVE_CANDIDATES = (REPO / ".gpu" / "cifar10-jpeg.tar.gz", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
DEFAULT_MODELS = "resnet20,res_se_net20,res_se_net56,res_se_net110"


# ---------------------------------------------------------------------------------------------------------------
# Header: what ran where
# ---------------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torchvision_version() -> str:
    try:
        import torchvision

        return torchvision.__version__
    except Exception as e:  # noqa: BLE001  ImportError, or an operator-registration error against a mismatched torch
        return f"not importable ({type(e).__name__})"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True, capture_output=True,
                             timeout=5, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, text=True,
                               capture_output=True, timeout=5, check=False).stdout.strip()
        return (out + ("+dirty" if dirty else "")) if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_device(name: str) -> torch.device:
    from ressenet.engine.train import resolve_device as engine_resolve

    return engine_resolve(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def header(title: str, device: torch.device, *, with_torchvision: bool = False) -> dict[str, Any]:
    """Prints (and returns) the command line, versions, device, CPU and threads; every benchmark starts with it."""
    import numpy as np

    from ressenet import __version__

    info = {
        "benchmark": title,
        "command": shlex.join([sys.executable, *sys.argv]),
        "python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__,
        "torchvision": torchvision_version() if with_torchvision else "not used",
        "ressenet": __version__, "git": git_commit(),
        "device": str(device), "device_name": device_name(device),
        "cpu": cpu_model(), "logical_cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
    }
    print(f"== {title}")
    print(f"command: {info['command']}")
    print(f"python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, numpy {info['numpy']}, "
          f"ressenet {info['ressenet']} (git {info['git']})")
    print(f"device: {device} ({info['device_name']}); cpu: {info['cpu']}, {info['logical_cores']} logical cores, "
          f"torch intra-op threads {info['threads']}")
    print(f"load average (1, 5, 15 min) at start: {info['load_average_start']}"
          + ("  <- other work is running; figures will be low and noisy" if info["load_average_start"][0] > 0.5
             else ""))
    return info


def footer(info: dict[str, Any]) -> None:
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(f"load average at end: {info['load_average_end']}")


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {path}")


def summary_stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt_rate(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):9.1f} ({min(values):.0f}..{max(values):.0f})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------
# Data and switch arguments shared by the benchmarks
# ---------------------------------------------------------------------------------------------------------------
def default_archive() -> Path:
    for p in ARCHIVE_CANDIDATES:
        if p.exists():
            return p
    return ARCHIVE_CANDIDATES[-1]


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and device")
    g.add_argument("--dataset", choices=["imagefolder", "synthetic"], default="imagefolder",
                   help="imagefolder: the CIFAR-10 JPEG copy (default); synthetic: random images, nothing to read")
    g.add_argument("--data-root", type=Path, default=None,
                   help=f"image folder or archive (default: first of {', '.join(map(str, ARCHIVE_CANDIDATES))})")
    g.add_argument("--cache-dir", default=None, help="decoded-image cache (default: ressenet's)")
    g.add_argument("--train-limit", type=int, default=0, help="use a fixed subset of N training images (0 = all)")
    g.add_argument("--test-limit", type=int, default=1000,
                   help="test images for the evaluation train() always runs at its end (kept small: not timed)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    g.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    root = args.data_root or default_archive()
    return {"data.dataset": args.dataset, "data.data_root": str(root) if args.dataset == "imagefolder" else None,
            "data.cache_dir": args.cache_dir, "data.train_limit": args.train_limit, "data.test_limit": args.test_limit}


def load_engine_data(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's own data (``load_data``): train/test ImageDatasets and the normalisation it uses."""
    from ressenet.engine.config import load_config
    from ressenet.engine.train import load_data

    return load_data(load_config(None, data_overrides(args)))


@dataclass(frozen=True)
class Switch:
    """One engine setting: ``precision`` (auto|fp32|bf16|fp16), ``channels_last`` (None: engine default), compile."""

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False

    @property
    def name(self) -> str:
        if self == Switch():
            return "default"
        parts = [self.precision]
        if self.channels_last is not None:
            parts.append("cl" if self.channels_last else "nchw")
        if self.compile:
            parts.append("compile")
        return "+".join(parts)

    def resolved(self, device: torch.device) -> Switch:
        from ressenet.engine.train import resolve_channels_last, resolve_precision

        return Switch(resolve_precision(self.precision, device), resolve_channels_last(self.channels_last, device),
                      self.compile)

    def label(self, device: torch.device) -> str:
        r = self.resolved(device)
        return self.name if r == self else f"{self.name} (= {r.name})"


def parse_switch(text: str) -> Switch:
    """``default`` (the engine's own choice), or ``PRECISION[+cl|+nchw][+compile]``; fp32 alone means NCHW."""
    text = text.strip()
    if text == "default":
        return Switch()
    prec, *rest = text.split("+")
    if prec not in ("auto", "fp32", "bf16", "fp16"):
        raise SystemExit(f"switch {text!r}: start with a precision (auto, fp32, bf16, fp16) or say 'default'")
    cl: bool | None = None if prec == "auto" else False
    comp = False
    for tok in rest:
        if tok == "cl":
            cl = True
        elif tok == "nchw":
            cl = False
        elif tok == "compile":
            comp = True
        else:
            raise SystemExit(f"switch {text!r}: unknown part {tok!r} (expected cl, nchw or compile)")
    return Switch(prec, cl, comp)


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def train_flops_per_image(model_name: str) -> tuple[int, int]:
    """(forward MACs, training FLOPs) per 32x32 image: FLOPs = 3 passes (forward, two backward matmuls) x 2 x MACs."""
    from ressenet.models import count_macs, create_model

    macs = count_macs(create_model(model_name, num_classes=10))
    return macs, 6 * macs


def scaled_log_every(base: int, macs: int, macs_min: int) -> int:
    """Iterations per logging interval: ``base`` for the cheapest model, proportionally fewer for costlier ones."""
    return max(1, round(base * macs_min / macs))


# ---------------------------------------------------------------------------------------------------------------
# The three measurements
# ---------------------------------------------------------------------------------------------------------------
def engine_run(model: str, switch: Switch, args: argparse.Namespace, *, log_every: int, intervals: int,
               batch_size: int = 128, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Times ``train(cfg)`` on ``(1 + intervals) * log_every`` iterations; returns its steady-state images/s."""
    from ressenet.engine.config import load_config
    from ressenet.engine.train import train

    iters = log_every * (1 + intervals)
    with tempfile.TemporaryDirectory(prefix="ressenet-bench-") as tmp:
        overrides = data_overrides(args) | {
            "model.name": model, "optim.iters": iters, "optim.batch_size": batch_size,
            "run.out": tmp, "run.device": args.device, "run.precision": switch.precision,
            "run.channels_last": switch.channels_last, "run.compile": switch.compile,
            "run.eval_every": 0, "run.ckpt_every": 0, "run.log_every": log_every, "run.progress": "none",
        } | (extra or {})
        cfg = load_config(None, overrides)
        t0 = time.perf_counter()
        summary = train(cfg, overwrite=True)
        wall = time.perf_counter() - t0
        recs = [json.loads(ln) for ln in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rates = [r["images_per_second"] for r in recs]
    steady = summary["train_images_per_second"] if summary else None
    if steady is None:  # a single interval: nothing after the warm-up one
        steady = rates[-1]
    return {"images_per_second": steady, "interval_rates": rates[1:], "first_interval_rate": rates[0],
            "iters": iters, "log_every": log_every, "wall_seconds": wall, "final_loss": recs[-1]["train_loss"]}


def bare_run(model_name: str, switch: Switch, device: torch.device, *, warmup: int, iters: int,
             batch_size: int = 128) -> float:
    """Images/s of forward + backward + SGD step on one fixed synthetic batch, as the engine would set it up."""
    from ressenet.engine.train import autocast_context
    from ressenet.models import create_model

    r = switch.resolved(device)
    fmt = torch.channels_last if r.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                          **({"fused": True} if device.type == "cuda" else {}))
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,), device=device)
    step_model = torch.compile(model) if r.compile else model
    amp = autocast_context(r.precision, device)

    def step() -> None:
        with amp:
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return batch_size * iters / (time.perf_counter() - t0)


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """The released code's ``accuracy`` helper (from its utils/eval.py), verbatim in behaviour."""
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0).mul_(100.0 / batch_size) for k in topk]


class Reference:
    """The paper's released training loop (PyTorch 0.4-era CIFAR code), on today's PyTorch.

    Kept as the released script builds it: ``DataLoader(trainset, batch_size=128, shuffle=True,
    num_workers=workers)`` without persistent workers, pinned memory or dropped last batch, a fresh iterator
    (fresh worker processes) per timed run; eager NCHW float32 model; per step ``loss.item()`` and top-1/top-5.
    """

    def __init__(self, model_name: str, data: dict[str, Any], device: torch.device, *, batch_size: int = 128,
                 workers: int = 2, seed: int = 12) -> None:
        from data_pipeline import PILImages  # the colleague's map-style PIL dataset (benchmarks/data_pipeline.py)
        from torchvision import transforms

        from ressenet.models import create_model

        ds = data["train"]
        transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(data["mean"], data["std"]),
        ])
        images = ds.images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 32, 32, 3) uint8, as CIFAR10.data
        self.dataset = PILImages(images, ds.labels.numpy(), transform)
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
                sync(self.device)
                images, t0 = 0, time.perf_counter()
            try:
                inputs, targets = next(it)
            except StopIteration:
                it = iter(self.loader)
                inputs, targets = next(it)
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            outputs = model(inputs)
            loss = self.criterion(outputs, targets)
            prec1, prec5 = _accuracy(outputs.data, targets.data, topk=(1, 5))
            _ = (loss.item(), prec1.item(), prec5.item())  # AverageMeter.update(...) in the released loop
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            images += inputs.size(0)
        sync(self.device)
        rate = images / (time.perf_counter() - t0)
        del it  # shuts its worker processes down, so they do not compete with the next measurement
        return rate


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------
def default_switches(device: torch.device) -> str:
    if device.type == "cuda":
        return "fp32,fp32+cl,bf16+cl,bf16+cl+compile"
    return "fp32,fp32+cl,bf16+cl,fp32+cl+compile"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated registry names")
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
    add_data_args(parser)
    args = parser.parse_args()
    apply_threads(args)

    device = resolve_device(args.device)
    models = parse_list(args.models)
    switches = [parse_switch(s) for s in parse_list(args.switches or default_switches(device))]
    ref_models = models if args.reference_models == "all" else (
        [] if args.reference_models == "none" else parse_list(args.reference_models))
    default_sw = Switch().resolved(device)
    log_base = args.log_every or (50 if device.type == "cuda" else 10)

    info = header("training throughput: engine vs the released-code pipeline", device,
                  with_torchvision=bool(ref_models))
    t_start = time.perf_counter()
    costs = {m: train_flops_per_image(m) for m in models}
    macs_min = min(c[0] for c in costs.values())
    data = load_engine_data(args)
    print(f"data: {data['train'].description}: {len(data['train'])} training images; batch {args.batch_size}; "
          f"engine default on {device.type}: {default_sw.name}")
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
        le = scaled_log_every(log_base, macs, macs_min)
        timed = le * args.intervals
        row: dict[str, Any] = {"macs": macs, "train_flops": flops, "log_every": le,
                               "engine": {s.name: [] for s in switches}, "engine_runs": {s.name: [] for s in switches},
                               "reference": [], "bare": {}}
        ref = None
        if model in ref_models:
            ref = Reference(model, data, device, batch_size=args.batch_size, workers=args.workers)
        bare_switches = [] if args.bare == "none" else (switches if args.bare == "all" else [Switch()])
        for s in bare_switches:
            row["bare"][s.name] = []
        for rep in range(args.repeats):
            for s in switches:
                if over_deadline():
                    skipped.append(f"{model} {s.name} repeat {rep + 1}")
                    continue
                r = engine_run(model, s, args, log_every=le, intervals=args.intervals, batch_size=args.batch_size)
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
                rate = bare_run(model, s, device, warmup=le, iters=timed, batch_size=args.batch_size)
                row["bare"][s.name].append(rate)
                print(f"  [{model} rep {rep + 1}] bare step {s.label(device):<21} {rate:9.1f} img/s", flush=True)
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
            lines.append((name, fmt_rate(vals), ratio, vs_bare))
        if row["reference"]:
            lines.append(("reference (released loop)", fmt_rate(row["reference"]), f"{1:10.2f}x", f"{'-':>11}"))
        for sname, vals in row["bare"].items():
            if vals:
                r = f"{statistics.median(vals) / ref_med:10.2f}x" if ref_med else f"{'-':>11}"
                lines.append((f"bare step {sname}" + (f" (= {Switch().resolved(device).name})"
                                                       if sname == "default" else ""), fmt_rate(vals), r, f"{'-':>11}"))
        for name, rate, ratio, vs_bare in lines:
            lead = f"{model:<15} {row['train_flops'] / 1e9:9.3f}" if first else f"{'':<15} {'':>9}"
            print(f"{lead}  {name:<32} {rate:>28} {ratio:>11} {vs_bare:>11}")
            first = False
        dflt = next((s.name for s in switches if s.resolved(device) == default_sw and row["engine"][s.name]), None)
        row["summary"] = {
            "engine": {k: summary_stats(v) for k, v in row["engine"].items() if v},
            "reference": summary_stats(row["reference"]) if row["reference"] else None,
            "bare": {k: summary_stats(v) for k, v in row["bare"].items() if v},
            "engine_default_switch": dflt,
            "engine_default_over_reference":
                statistics.median(row["engine"][dflt]) / ref_med if dflt and ref_med else None,
            "engine_default_over_bare":
                statistics.median(row["engine"][dflt]) / bare_med if dflt and bare_med else None,
        }
    print("* = the engine's default switch on this device; 'x reference' = median / reference median; "
          "'/ bare step' = engine median / bare-step median for the same switch")
    if skipped:
        print(f"skipped by --deadline {args.deadline:g} s: {'; '.join(skipped)}")
    results["skipped"] = skipped
    print(f"total {time.perf_counter() - t_start:.0f} s")
    footer(info)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
