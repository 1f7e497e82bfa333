"""Helpers shared by the benchmark scripts in this folder (not a benchmark itself).

* what ran where: the header every benchmark prints first (command line, versions, git commit, device, CPU, threads,
  load average with a warning when other work is running), the footer (load average at the end), ``finish`` (total
  time, footer, ``--json`` file);
* figures: medians (min..max) of repeated timings, device synchronisation before reading the clock;
* data and device arguments (``add_data_args``), the engine's own data, engine switches (precision, channels-last,
  compile);
* the measurements several scripts share: a short engine run (``train(cfg)``), the bare training step on a synthetic
  batch, the released code's ``accuracy`` helper and its map-style PIL dataset.

The scripts are run as ``python benchmarks/<script>.py`` from the repository root and put this folder on
``sys.path``, then ``import _common as common``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ressenet.engine.config import Config
from ressenet.engine.rundir import map_strings
from ressenet.engine.setup import RunData
from ressenet.files import atomic_write_text

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# Where the CIFAR-10 JPEG archive is looked for: the GPU machine's carried copy first, then shared/ beside the repo.
ARCHIVE_CANDIDATES = (REPO / ".gpu" / "cifar10-jpeg.tar.gz", REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
DEFAULT_MODELS = "resnet20,res_se_net20,res_se_net56,res_se_net110"
PROTOCOL_ITERS = Config().optim.iters  # the paper's run length (64,000), for which a switch's defaults resolve


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
    from ressenet.engine.setup import resolve_device as engine_resolve

    return engine_resolve(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def header(title: str, device: torch.device, *, with_torchvision: bool = False) -> dict[str, Any]:
    """Prints (and returns) the command line, versions, device, CPU and threads; every benchmark starts with it."""
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


def portable(value: Any) -> Any:
    """``value`` with this machine's paths made general, for a results file that gets committed: the interpreter as
    its name (``python3``), the temporary folder as ``$TMPDIR``, paths in the checkout relative to it and paths
    beside it (``../shared``) relative to it too."""
    def cut(v: str) -> str:
        v = v.replace(sys.executable, Path(sys.executable).name)
        v = re.sub(rf"(?<![\w.~/-]){re.escape(tempfile.gettempdir().rstrip('/'))}/", "$TMPDIR/", v)
        v = re.sub(rf"(?<![\w.~/-]){re.escape(str(REPO))}/", "", v)
        return re.sub(rf"(?<![\w.~/-]){re.escape(str(REPO.parent))}/", "../", v)

    return map_strings(value, cut)


def write_json(path: str | Path | None, payload: dict[str, Any], announce: bool = True) -> None:
    """Writes ``payload`` (its paths made :func:`portable`) as indented JSON to ``path``, when given, atomically: a
    script that writes after every case and is killed mid-way leaves the cases it finished, never half a file."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(portable(payload), indent=1) + "\n")
        if announce:
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


def finish(info: dict[str, Any], json_path: Path | None, payload: dict[str, Any], t_start: float | None = None) -> int:
    """A benchmark's last lines: total time since ``t_start`` (when given), the footer, the ``--json`` file; 0."""
    if t_start is not None:
        print(f"total {time.perf_counter() - t_start:.0f} s")
    footer(info)
    write_json(json_path, payload)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Data and switch arguments
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


def load_engine_data(args: argparse.Namespace) -> RunData:
    """The engine's own data (``load_data``): train/test ImageDatasets and the normalisation it uses."""
    from ressenet.engine.config import load_config
    from ressenet.engine.setup import load_data

    # load_data refuses a training split smaller than one batch: the script's --batch-size, not the engine's default
    # 128 (which a small --train-limit is below although every run of the script fits); a script that only
    # evaluates trains no batch.
    batch = {"optim.batch_size": getattr(args, "batch_size", None) or 1}
    return load_data(load_config(None, data_overrides(args) | batch))


@dataclass(frozen=True)
class Switch:
    """One engine setting: ``precision`` (auto|fp32|bf16|fp16), ``channels_last`` and ``compile`` (None: the
    engine's default), and the compile mode (``reduce-overhead`` adds CUDA graphs: the token ``ro``)."""

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | None = None
    compile_mode: str = "auto"

    @property
    def name(self) -> str:
        if self == Switch():
            return "default"
        parts = [self.precision]
        if self.channels_last is not None:
            parts.append("cl" if self.channels_last else "nchw")
        if self.compile:
            parts.append("compile")
            if self.compile_mode == "reduce-overhead":
                parts.append("ro")
        return "+".join(parts)

    @property
    def flags(self) -> list[str]:
        """The ``ressenet train`` flags that select this switch (empty for the engine's defaults)."""
        out = [] if self.precision == "auto" else ["--precision", self.precision]
        if self.channels_last is not None:
            out.append("--channels-last" if self.channels_last else "--no-channels-last")
        if self.compile is not None:
            out += ["--compile", "--compile-mode", self.compile_mode] if self.compile else ["--no-compile"]
        return out

    def resolved(self, device: torch.device) -> Switch:
        from ressenet.engine.setup import resolve_channels_last, resolve_compile, resolve_precision

        # Resolved as for the paper's 64,000-iteration run: the engine's defaults depend on the run's length and
        # precision (compile on the CPU in fp32 from CPU_COMPILE_MIN_ITERS), and a benchmark's short run stands for
        # a long one.
        precision = resolve_precision(self.precision, device)
        on, mode = resolve_compile(self.compile, self.compile_mode, device, iters=PROTOCOL_ITERS, precision=precision)
        return Switch(precision, resolve_channels_last(self.channels_last, device), on, mode if on else "default")

    def label(self, device: torch.device) -> str:
        r = self.resolved(device)
        return self.name if r == self else f"{self.name} (= {r.name})"


def parse_switch(text: str) -> Switch:
    """``default`` (the engine's own choices), or ``PRECISION[+cl|+nchw][+compile[+ro]]``: fp32 alone means NCHW
    and eager; ``ro`` is torch.compile's ``reduce-overhead`` mode (CUDA graphs) and implies ``compile``."""
    text = text.strip()
    if text == "default":
        return Switch()
    prec, *rest = text.split("+")
    if prec not in ("auto", "fp32", "bf16", "fp16"):
        raise SystemExit(f"switch {text!r}: start with a precision (auto, fp32, bf16, fp16) or say 'default'")
    cl: bool | None = None if prec == "auto" else False
    comp: bool | None = None if prec == "auto" else False
    mode = "auto" if prec == "auto" else "default"
    for tok in rest:
        if tok == "cl":
            cl = True
        elif tok == "nchw":
            cl = False
        elif tok == "compile":
            comp = True
        elif tok == "ro":
            comp, mode = True, "reduce-overhead"
        else:
            raise SystemExit(f"switch {text!r}: unknown part {tok!r} (expected cl, nchw, compile or ro)")
    return Switch(prec, cl, comp, mode)


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
# Measurements shared by the benchmarks
# ---------------------------------------------------------------------------------------------------------------
def engine_run(model: str, switch: Switch, args: argparse.Namespace, *, log_every: int, intervals: int,
               batch_size: int = 128, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Times ``train(cfg)`` on ``(1 + intervals) * log_every`` iterations; returns its steady-state images/s."""
    from ressenet.engine.config import load_config
    from ressenet.engine.train import train

    iters = log_every * (1 + intervals)
    compiled = switch.resolved(resolve_device(args.device)).compile
    with tempfile.TemporaryDirectory(prefix="ressenet-bench-") as tmp:
        overrides = data_overrides(args) | {
            "model.name": model, "optim.iters": iters, "optim.batch_size": batch_size,
            "run.out": tmp, "run.device": args.device, "run.precision": switch.precision,
            "run.channels_last": switch.channels_last,
            # Explicit, as a full-length run resolves it (Switch.resolved): this run is far shorter.
            "run.compile": compiled,
            "run.compile_mode": switch.compile_mode,
            "run.eval_every": 0, "run.ckpt_every": 0, "run.log_every": log_every, "run.progress": "none",
        } | (extra or {})
        cfg = load_config(None, overrides)
        if compiled:
            torch._dynamo.reset()  # each model compiles afresh: no recompile limit, no graphs of the last model
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


def train_model(model_name: str, switch: Switch, device: torch.device, *,
                init: dict[str, torch.Tensor] | None = None) -> tuple[torch.nn.Module, Switch, torch.memory_format, Any]:
    """``model_name`` set up for training as the engine sets it up under ``switch``: (model in train mode on
    ``device`` in the switch's memory format, the resolved switch, that memory format, the autocast context).

    ``init``: a state dict whose matching entries replace the initial weights (extra keys are ignored, so a ResNet
    can take a Res-SE-Net's weights).
    """
    from ressenet.engine.setup import autocast_context
    from ressenet.models import create_model

    r = switch.resolved(device)
    fmt = torch.channels_last if r.channels_last else torch.contiguous_format
    model = create_model(model_name, num_classes=10)
    if init is not None:
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in init.items() if k in own}, strict=False)
    return model.to(device, memory_format=fmt).train(), r, fmt, autocast_context(r.precision, device)


def make_bare_step(model_name: str, switch: Switch, device: torch.device, *, batch_size: int = 128,
                   lr: float = 0.1, init: dict[str, torch.Tensor] | None = None) -> Callable[[], None]:
    """Forward + backward + SGD step of ``model_name`` on one fixed synthetic batch, set up as the engine would.

    ``init``: as in ``train_model``. ``lr=0`` keeps the weights where they start while every step still does the
    whole update's arithmetic.
    """
    torch.manual_seed(0)
    model, r, fmt, amp = train_model(model_name, switch, device, init=init)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4,
                          **({"fused": True} if device.type == "cuda" else {}))
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,), device=device)
    if r.compile:
        torch._dynamo.reset()
    step_model = torch.compile(model, mode=r.compile_mode) if r.compile else model

    def step() -> None:
        with amp:
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bare_run(model_name: str, switch: Switch, device: torch.device, *, warmup: int, iters: int,
             batch_size: int = 128) -> float:
    """Images/s of the bare step (``make_bare_step``) over ``iters`` steps after ``warmup`` untimed ones."""
    step = make_bare_step(model_name, switch, device, batch_size=batch_size)
    for _ in range(warmup):
        step()
    return batch_size * iters / timed_steps(step, iters, device)


def timed_steps(step: Callable[[], None], n: int, device: torch.device) -> float:
    """Seconds for ``n`` calls of ``step``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return time.perf_counter() - t0


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """The released code's ``accuracy`` helper (from its utils/eval.py), verbatim in behaviour."""
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0).mul_(100.0 / batch_size) for k in topk]


class PILImages(torch.utils.data.Dataset):
    """Map-style dataset of PIL images, as torchvision.datasets.CIFAR10 serves them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = images  # (N, 32, 32, 3) uint8
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])

