"""The training loop: the paper's protocol (Varshaneya et al., arXiv:1902.06066, following He et al.) by default.

64,000 iterations of SGD (momentum 0.9, weight decay 1e-4, batch 128), lr 0.1 divided by 10 at 32,000 and
48,000, pad-crop-flip augmentation. The loop counts iterations, not epochs, evaluates every
``run.eval_every`` iterations, checkpoints atomically and resumes bit-exactly on the CPU: the data order and
augmentation are pure functions of (seed, epoch, position), and nothing else draws random numbers.

``train(cfg)`` is the library entry point; ``ressenet train`` calls it.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ressenet.engine.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from ressenet.engine.config import Config, config_from_dict, diff_configs
from ressenet.engine.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from ressenet.errors import RessenetError

__all__ = ["train", "evaluate", "evaluate_checkpoint", "lr_at", "resolve_device", "build_model", "load_data"]

CHECKPOINT_VERSION = 1
RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json")


# ---------------------------------------------------------------------------------------------------------------
# Set-up helpers
# ---------------------------------------------------------------------------------------------------------------
def lr_at(cfg: Config, it: int) -> float:
    """Step schedule: ``lr * gamma ** (number of milestones <= it)`` (x0.1 at 32k and 48k in the paper)."""
    return cfg.optim.lr * cfg.optim.gamma ** bisect_right(cfg.optim.milestones, it)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RessenetError(f"--device {name} asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision in ("bf16", "fp16") and device.type == "cpu" and precision == "fp16":
            raise RessenetError("--precision fp16 needs a GPU; use fp32 or bf16 on the CPU")
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"  # CPU bf16 autocast is slower than fp32 on CPUs without AMX, and changes the numbers


def resolve_channels_last(flag: bool | None, device: torch.device) -> bool:
    # channels-last lets cuDNN use tensor-core kernels without transposes; on the CPU oneDNN's blocked
    # convolutions also prefer NHWC (measured in benchmarks/train_throughput.py).
    return device.type in ("cuda", "cpu") if flag is None else flag


# A CPU run compiles by default from this many iterations on. Compiling costs about 80 s on the 2-core CPU of
# BENCHMARKS.md (less with Inductor's disk cache warm) and then trains res_se_net20 1.15-1.2x faster, about 0.07 s
# saved per step at batch 128, so it pays for itself after some 1,200 iterations; 2,000 keeps short runs (tests,
# the `quick` preset's 1,000) eager.
CPU_COMPILE_MIN_ITERS = 2_000


def cpu_compiler_found() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here: Dynamo runs on this Python and Inductor finds a C++
    compiler (``g++``/``clang++``, or ``$CXX``)."""
    try:
        import torch._dynamo
        from torch._inductor.cpp_builder import get_cpp_compiler

        if not torch._dynamo.is_dynamo_supported():
            return False
        get_cpp_compiler()  # raises when no compiler is found
        return True
    except Exception:  # a private API: if it moved or failed, a compiler is not known to be there
        return False


def resolve_compile(flag: bool | None, mode: str, device: torch.device, world_size: int = 1, *,
                    iters: int = 0) -> tuple[bool, str]:
    """(compile?, torch.compile mode) for a run of ``iters`` iterations.

    ``iters`` is the run's whole length, not what is left when resuming: the choice must not change on resume, or a
    resumed run would switch kernels (compiled and eager differ in the last bits) and stop matching an
    uninterrupted one.

    Auto (``flag`` None): on a single CUDA device, compiled with CUDA graphs: at batch 128 these nets are
    launch-bound, and res_se_net20 trained at 11k images/s eager and 40k compiled with CUDA graphs on an H200, the
    whole 64,000-iteration protocol in 247 s (BENCHMARKS.md). On the CPU, compiled (Inductor's C++ kernels) when
    the run has at least ``CPU_COMPILE_MIN_ITERS`` iterations and a C++ compiler is found: 1.15-1.2x faster.
    Eager under DDP and everywhere else.
    """
    if flag is None:
        if world_size != 1:
            flag = False
        elif device.type == "cuda":
            flag = True
        else:
            flag = device.type == "cpu" and iters >= CPU_COMPILE_MIN_ITERS and cpu_compiler_found()
    if mode == "auto":
        mode = "reduce-overhead" if device.type == "cuda" else "default"
    return flag, mode


def resolve_eval_batch_size(n: int | None, device: torch.device) -> int:
    """The evaluation batch: as given, else 1000 on CUDA and 100 on the CPU (cache-sized; BENCHMARKS.md)."""
    return n if n else (1000 if device.type == "cuda" else 100)


def autocast_context(precision: str, device: torch.device) -> Any:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def load_data(cfg: Config) -> dict[str, Any]:
    """Train (and optional validation) and test splits as ImageDatasets, plus the normalisation constants."""
    from ressenet.data import load_datasets, normalization, train_val_split

    d = cfg.data
    extra = {}
    if d.dataset == "synthetic":
        extra = {"train_size": d.train_limit or 50_000, "test_size": d.test_limit or 10_000}
    splits = load_datasets(d.dataset, d.data_root, download=d.download, cache_dir=d.cache_dir, **extra)
    train_ds, test_ds = (_limit(splits["train"], d.train_limit), _limit(splits["test"], d.test_limit))
    val_ds = None
    if d.val_split:
        # A fixed split seed: every run seed holds out the same images, as He et al.'s 45k/5k split.
        train_ds, val_ds = train_val_split(train_ds, val_size=d.val_split, seed=0)
    if len(train_ds) < cfg.optim.batch_size:
        raise RessenetError(f"the training split has {len(train_ds)} images, fewer than one batch of "
                            f"{cfg.optim.batch_size}; lower --batch-size")
    mean, std = normalization(d.dataset, d.normalization, train=train_ds) if d.normalization == "dataset" \
        else normalization(d.dataset, d.normalization)
    return {"train": train_ds, "val": val_ds, "test": test_ds, "mean": mean, "std": std}


def _limit(ds: Any, n: int) -> Any:
    """A fixed random subset of ``n`` images (folders are sorted by class, so "the first n" would be one class)."""
    if not n or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return ds.subset(idx)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    from ressenet.models import create_model

    m = cfg.model
    if m.num_classes is not None and m.num_classes != num_classes:
        raise RessenetError(f"model.num_classes={m.num_classes} but the dataset has {num_classes} classes; "
                            f"drop --num-classes to take it from the data")
    return create_model(m.name, num_classes=num_classes, shortcut=m.shortcut, se_reduction=m.se_reduction,
                        layout=m.layout)


def _versions(device: torch.device) -> dict[str, Any]:
    from ressenet import __version__

    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, text=True,
                                capture_output=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    # A copy of the tree without .git (a device machine, a cluster's scratch) can be told its commit.
    commit = commit or os.environ.get("RESSENET_GIT_COMMIT") or None
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"ressenet": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "git_commit": commit, "device": str(device), "device_name": dev_name, "threads": torch.get_num_threads(),
            "host": platform.node()}


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *, amp: Any = None,
             dist_info: DistInfo | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over all batches, summed across ranks when data-parallel."""
    was_training = model.training
    model.eval()
    sums = None
    for x, y in batches:
        with amp or contextlib.nullcontext():
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit = topk == y[:, None]
        batch = torch.stack([F.cross_entropy(logits, y, reduction="sum"), hit[:, 0].sum().float(),
                             hit.any(dim=1).sum().float(), torch.tensor(float(len(y)), device=y.device)])
        sums = batch if sums is None else sums + batch
    model.train(was_training)
    if sums is None:
        raise RessenetError("evaluation got no images")
    all_reduce_sum(sums, dist_info or DistInfo())
    loss, top1, top5, n = sums.tolist()
    return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": int(n)}


def _eval_split(model: nn.Module, ds: Any, data: dict[str, Any], cfg: Config, device: torch.device,
                channels_last: bool, amp: Any, dist_info: DistInfo) -> dict[str, float]:
    from ressenet.data import eval_batches

    batches = eval_batches(ds, resolve_eval_batch_size(cfg.run.eval_batch_size, device), mean=data["mean"],
                           std=data["std"], device=device, channels_last=channels_last, rank=dist_info.rank,
                           world_size=dist_info.world_size)
    return evaluate(model, batches, amp=amp, dist_info=dist_info)


def evaluate_checkpoint(path: str | Path, *, dataset: str | None = None, data_root: str | None = None,
                        cache_dir: str | None = None, split: str = "test", device: str = "auto",
                        batch_size: int | None = None) -> dict[str, Any]:
    """Top-1/top-5/loss of any checkpoint the engine wrote, on a split of its dataset (or another)."""
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"], where=str(path))
    if dataset is not None:
        cfg.data.dataset = dataset
    if data_root is not None:
        cfg.data.data_root = data_root
    if cache_dir is not None:
        cfg.data.cache_dir = cache_dir
    cfg.run.eval_batch_size = batch_size
    dev = resolve_device(device)
    data = load_data(cfg)
    if split == "val" and data["val"] is None:
        raise RessenetError(f"{path} was trained without a validation split; use --split test")
    ds = data[split]
    model = build_model(cfg, len(data["train"].classes))
    model.load_state_dict(state["model"])
    channels_last = resolve_channels_last(cfg.run.channels_last, dev)
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    res = _eval_split(model, ds, data, cfg, dev, channels_last, None, DistInfo())
    return {"checkpoint": str(path), "model": cfg.model.name, "dataset": cfg.data.dataset, "split": split,
            "iter": state.get("iter"), "top1": res["top1"], "top5": res["top5"], "loss": res["loss"],
            "images": res["images"]}


# ---------------------------------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------------------------------
def _prepare_run_dir(cfg: Config, overwrite: bool, is_main: bool) -> tuple[Path, dict[str, Any] | None]:
    """Create or check ``run.out``; return (dir, finished summary or None). Refuses a foreign configuration."""
    out = Path(cfg.run.out)
    cfg_file = out / "config.yaml"
    if cfg_file.is_file():
        old = yaml.safe_load(cfg_file.read_text()) or {}
        changed = diff_configs(old, cfg.to_dict())
        if changed and not overwrite:
            shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(cfg.to_dict(), k)!r}" for k in changed[:4])
            raise RessenetError(f"{out} holds a run with another configuration ({shown}); choose another --out, "
                                f"or pass --overwrite to replace it")
        if changed and overwrite and is_main:
            for name in RUN_FILES + ("train.log",):
                (out / name).unlink(missing_ok=True)
        elif (out / "summary.json").is_file() and not overwrite:
            return out, json.loads((out / "summary.json").read_text())
        elif overwrite and is_main:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
    elif out.exists() and any(out.glob("*.pt")) and not overwrite:
        raise RessenetError(f"{out} holds checkpoints but no config.yaml; choose another --out or pass --overwrite")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    return out, None


def _get(tree: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return (tree.get(section) or {}).get(key)


class _MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only); on resume drops lines past the checkpoint."""

    def __init__(self, path: Path, enabled: bool, resume_iter: int | None) -> None:
        self.path, self.enabled = path, enabled
        if enabled and resume_iter is not None and path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and _line_iter(ln) <= resume_iter]
            atomic_write_text(path, "".join(ln + "\n" for ln in keep))
        elif enabled and resume_iter is None:
            path.unlink(missing_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()


def _line_iter(line: str) -> int:
    try:
        return int(json.loads(line)["iter"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # an unreadable (torn) line is dropped


class _Progress:
    """A tqdm bar on a terminal, plain log lines otherwise (``run.progress``)."""

    def __init__(self, mode: str, total: int, start: int, enabled: bool) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode if enabled else "none"
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, file=sys.stderr)

    def update(self, it: int, n: int, rec: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{rec['train_loss']:.3f}", lr=f"{rec['lr']:.3g}",
                                 img_s=f"{rec['images_per_second']:.0f}", refresh=False)
        elif self.mode == "plain":
            print(f"iter {it:>6}  epoch {rec['epoch']:>3}  loss {rec['train_loss']:.4f}  top1 {rec['train_top1']:5.2f}"
                  f"  lr {rec['lr']:.4g}  {rec['images_per_second']:.0f} img/s", flush=True)

    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StopRequested(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ---------------------------------------------------------------------------------------------------------------
# One step, one checkpoint: shared by the single-run loop and fused training (engine/fused.py)
# ---------------------------------------------------------------------------------------------------------------
def train_step(step_model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, amp: Any,
               x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on (x, y); returns the detached (loss, logits). The optimizer's lr must already be set."""
    with amp:
        logits = step_model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def make_checkpoint(cfg: Config, it: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, loader: Any, best: dict[str, Any], wall: float,
                    steady: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Everything ``last.pt`` holds: weights, optimizer, data position, RNG, bests, costs, the config."""
    return {"version": CHECKPOINT_VERSION, "iter": it, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "scheduler": {"milestones": list(cfg.optim.milestones), "gamma": cfg.optim.gamma, "lr": lr_at(cfg, it)},
            "data": loader.state_dict(), "best": best, "wall_seconds": wall, "steady": steady,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "config": cfg.to_dict()}


def restore_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler, loader: Any,
                       device: torch.device) -> tuple[int, dict[str, Any], float, dict[str, Any]]:
    """Loads ``path`` (written by :func:`make_checkpoint`) into the live objects; returns
    (iteration, bests, wall seconds so far, steady-state counters)."""
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(state["data"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return int(state["iter"]), dict(state["best"]), float(state["wall_seconds"]), dict(state["steady"])


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------
def train(cfg: Config, *, overwrite: bool = False) -> dict[str, Any] | None:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.optim``; write the run directory; return the summary.

    Resumes from ``<out>/last.pt`` when present. Returns the finished run's summary (rank 0; ``None`` on others).
    """
    from ressenet.data import TrainLoader
    from ressenet.models import count_params

    cfg.validate()
    if not cfg.run.out:
        cfg.run.out = f"runs/{cfg.model.name}_{cfg.data.dataset}_s{cfg.run.seed}"
    device_pref = resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = init_distributed(device_pref.type)
    try:
        device = resolve_device(cfg.run.device, dist_info.local_rank)
        out, finished = _prepare_run_dir(cfg, overwrite, dist_info.is_main)
        barrier(dist_info)
        if finished is not None:
            if dist_info.is_main:
                print(f"{out} already finished; delete summary.json or pass --overwrite to train again")
            return finished if dist_info.is_main else None
        if cfg.optim.batch_size % dist_info.world_size:
            raise RessenetError(f"batch size {cfg.optim.batch_size} does not split over {dist_info.world_size} "
                                f"processes; use a multiple of {dist_info.world_size}")
        return _train(cfg, out, device, dist_info, TrainLoader, count_params)
    finally:
        shutdown(dist_info)


def _train(cfg: Config, out: Path, device: torch.device, dist_info: DistInfo, loader_cls: Any,
           count_params: Any) -> dict[str, Any] | None:
    is_main = dist_info.is_main
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every training batch has the same shape (the loader drops the rest)
    precision = resolve_precision(cfg.run.precision, device)
    channels_last = resolve_channels_last(cfg.run.channels_last, device)
    amp = autocast_context(precision, device)
    data = load_data(cfg)
    classes = data["train"].classes

    torch.manual_seed(cfg.run.seed)  # model init identical on every rank (DDP also broadcasts rank 0's)
    raw_model = build_model(cfg, len(classes))
    n_params = count_params(raw_model)
    if cfg.run.sync_bn and device.type != "cuda":
        raise RessenetError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernels); drop --sync-bn")
    if cfg.run.sync_bn and dist_info.enabled:
        raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    raw_model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(raw_model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov,
                                **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loader = loader_cls(data["train"], cfg.optim.batch_size, mean=data["mean"], std=data["std"], seed=cfg.run.seed,
                        device=device, augment=cfg.data.augment, rank=dist_info.rank,
                        world_size=dist_info.world_size, channels_last=channels_last)

    # Resume -------------------------------------------------------------------------------------------------
    start_it, best = 0, {"test_top1": -1.0, "test_top5": 0.0, "test_iter": None, "val_top1": -1.0, "val_iter": None}
    elapsed_before, steady = 0.0, {"images": 0, "seconds": 0.0}
    last_path = out / "last.pt"
    if last_path.exists():
        start_it, best, elapsed_before, steady = restore_checkpoint(last_path, raw_model, optimizer, scaler, loader,
                                                                    device)
    model: nn.Module = raw_model
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    compile_on, compile_mode = resolve_compile(cfg.run.compile, cfg.run.compile_mode, device, dist_info.world_size,
                                               iters=cfg.optim.iters)
    # Auto already checked for a compiler; an explicit --compile is checked here, before a deep Inductor error.
    if compile_on and cfg.run.compile and device.type == "cpu" and not cpu_compiler_found():
        raise RessenetError("torch.compile on the CPU needs a C++ compiler (g++ or clang++, or $CXX) and a Python "
                            "that torch.compile supports, and none was found; install one or pass --no-compile")
    step_model = torch.compile(model, mode=compile_mode) if compile_on else model

    if is_main:
        tree = cfg.to_dict()
        tree["meta"] = _versions(device) | {"precision": precision, "channels_last": channels_last,
                                            "compile": compile_mode if compile_on else False,
                                            "world_size": dist_info.world_size, "data": data["train"].description}
        atomic_write_text(out / "config.yaml", yaml.safe_dump(tree, sort_keys=False))
    log = _MetricsLog(out / "metrics.jsonl", is_main, start_it if last_path.exists() else None)
    progress = _Progress(cfg.run.progress, cfg.optim.iters, start_it, is_main)
    if start_it:
        progress.message(f"resuming {out} at iteration {start_it}")
    if compile_on:
        how = "by default" if cfg.run.compile is None else "as asked"
        progress.message(f"compiling the model {how} (torch.compile, mode {compile_mode}): the first steps wait for "
                         f"it, a minute or two on a CPU; --no-compile trains eager")

    def checkpoint_state(it: int, wall: float) -> dict[str, Any]:
        return make_checkpoint(cfg, it, raw_model, optimizer, scaler, loader, best, wall, steady, device)

    # Stop cleanly on SIGINT/SIGTERM: finish the step, checkpoint, exit.
    stop: list[int] = []
    old_handlers = {}
    if threading_main():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, lambda s, _f: stop.append(s))

    # Device-side accumulators: no host synchronisation inside the loop (read at log/eval/checkpoint).
    # Nothing below creates a tensor from host data per step: on CUDA that copy would wait for the GPU.
    acc = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, correct
    images = 0  # seen since the last boundary, on this rank (a host count: the batch shape is known)
    first_bad = torch.full((), -1, device=device, dtype=torch.int64)
    step = torch.full((), start_it, device=device, dtype=torch.int64)  # device-side copy of `it`
    t_start = time.perf_counter()
    t_interval, it_interval = time.perf_counter(), start_it
    last_eval: dict[str, Any] = {}
    model.train()
    it = start_it
    try:
        while it < cfg.optim.iters:
            lr = lr_at(cfg, it)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, y = loader.next()
            ld, logits = train_step(step_model, optimizer, scaler, amp, x, y)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(ld), step, first_bad)
            acc[0] += ld.double() * len(y)
            acc[1] += (logits.argmax(1) == y).sum()
            images += len(y)
            step += 1
            it += 1

            is_end = it == cfg.optim.iters
            do_log = is_end or (cfg.run.log_every and it % cfg.run.log_every == 0)
            do_eval = is_end or (cfg.run.eval_every and it % cfg.run.eval_every == 0)
            do_ckpt = is_end or (cfg.run.ckpt_every and it % cfg.run.ckpt_every == 0) or bool(stop)
            if not (do_log or do_eval or do_ckpt):
                continue

            # A boundary: synchronise once (summed over ranks, so every rank stops together), check the loss,
            # log, evaluate, checkpoint.
            totals = all_reduce_sum(torch.cat([acc, acc.new_tensor([images]), (first_bad >= 0).double()[None]]),
                                    dist_info).tolist()
            if totals[3] > 0:
                bad = int(first_bad.item()) if first_bad.item() >= 0 else it - 1
                raise RessenetError(f"the training loss became non-finite at iteration {bad + 1} (lr {lr_at(cfg, bad):g});"
                                    f" the last good checkpoint is kept in {last_path}; lower --lr or check the data")
            now = time.perf_counter()
            seconds = now - t_interval
            if it_interval > start_it:
                # Steady state: skip each process's first interval (start-up, compilation, cache warm-up).
                steady["images"] += (it - it_interval) * cfg.optim.batch_size
                steady["seconds"] += seconds
            rec = {"kind": "train", "iter": it, "epoch": loader.epoch, "lr": lr,
                   "train_loss": totals[0] / max(totals[2], 1), "train_top1": 100.0 * totals[1] / max(totals[2], 1),
                   "images_per_second": (it - it_interval) * cfg.optim.batch_size / max(seconds, 1e-9),
                   "time": elapsed_before + now - t_start}
            acc.zero_()
            images = 0
            if do_eval:
                rec["kind"] = "eval"
                test = _eval_split(raw_model, data["test"], data, cfg, device, channels_last, amp, dist_info)
                rec.update(test_top1=test["top1"], test_top5=test["top5"], test_loss=test["loss"])
                if test["top1"] > best["test_top1"]:
                    best.update(test_top1=test["top1"], test_top5=test["top5"], test_iter=it)
                last_eval = rec
                if data["val"] is not None:
                    val = _eval_split(raw_model, data["val"], data, cfg, device, channels_last, amp, dist_info)
                    rec.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
                    if val["top1"] > best["val_top1"]:
                        best.update(val_top1=val["top1"], val_iter=it)
                        if is_main:
                            save_checkpoint(out / "best.pt", checkpoint_state(it, elapsed_before + now - t_start))
                progress.message(f"iter {it}: test top-1 {test['top1']:.2f}% top-5 {test['top5']:.2f}%"
                                 + (f"  val top-1 {rec['val_top1']:.2f}%" if "val_top1" in rec else ""))
            if do_log or do_eval:
                log.write(rec)
                progress.update(it, it - it_interval, rec)
            if do_ckpt and is_main:
                save_checkpoint(last_path, checkpoint_state(it, elapsed_before + time.perf_counter() - t_start))
            barrier(dist_info)
            if stop and not is_end:
                raise _StopRequested(stop[0])
            t_interval, it_interval = time.perf_counter(), it
    except _StopRequested as s:
        progress.close()
        if is_main:
            print(f"stopped by {s} at iteration {it}; checkpoint saved to {last_path}; run the same command to resume",
                  file=sys.stderr)
        raise SystemExit(128 + s.signum) from None
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    progress.close()

    if not last_eval:  # resumed from a checkpoint written at the last iteration: evaluate the final weights
        test = _eval_split(raw_model, data["test"], data, cfg, device, channels_last, amp, dist_info)
        last_eval = {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"]}
    wall = elapsed_before + time.perf_counter() - t_start
    summary = _summarize(cfg, out, data, last_eval, best, n_params, wall, steady, raw_model, device, channels_last,
                         amp, dist_info)
    if is_main:
        atomic_write_json(out / "summary.json", summary)
    return summary if is_main else None


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _summarize(cfg: Config, out: Path, data: dict[str, Any], f: dict[str, Any], best: dict[str, Any],
               n_params: int, wall: float, steady: dict[str, Any], raw_model: nn.Module, device: torch.device,
               channels_last: bool, amp: Any, dist_info: DistInfo) -> dict[str, Any]:
    """``summary.json``: final test accuracy, best-on-test (the paper's reporting), validation-selected, costs."""
    selected: dict[str, Any] = {"selected_test_top1": None, "selected_test_top5": None}
    if data["val"] is not None and (out / "best.pt").exists():
        state = load_checkpoint(out / "best.pt")
        model = build_model(cfg, len(data["train"].classes))
        model.load_state_dict(state["model"])
        model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        sel = _eval_split(model, data["test"], data, cfg, device, channels_last, amp, dist_info)
        selected = {"selected_test_top1": sel["top1"], "selected_test_top5": sel["top5"]}
    train_ds = data["train"]
    return {
        "model": cfg.model.name, "dataset": cfg.data.dataset,
        "data": {"source": train_ds.source, "description": train_ds.description, "lossless": train_ds.lossless,
                 "num_classes": len(train_ds.classes),
                 "classes": list(train_ds.classes), "train_size": len(train_ds), "test_size": len(data["test"]),
                 "val_size": len(data["val"]) if data["val"] is not None else 0},
        "seed": cfg.run.seed, "iters": cfg.optim.iters, "params": n_params,
        "test_top1": f["test_top1"], "test_top5": f["test_top5"], "test_loss": f["test_loss"],
        "best_test_top1": max(best["test_top1"], f["test_top1"]),
        "best_test_top5": best["test_top5"] if best["test_top1"] >= f["test_top1"] else f["test_top5"],
        "best_test_iter": best["test_iter"],
        "best_test_note": "selected on the test set, as the paper's code reports: optimistic",
        "val_top1": f.get("val_top1"),
        "best_val_top1": best["val_top1"] if best["val_iter"] is not None else None,
        "best_val_iter": best["val_iter"], **selected,
        "wall_seconds": wall,
        "train_images_per_second": steady["images"] / steady["seconds"] if steady["seconds"] else None,
        "world_size": dist_info.world_size, "config": cfg.to_dict(),
    }
