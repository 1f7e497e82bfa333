"""Setting a run up: device, precision, memory format, data, model, and what a run records about its machine.

Shared by training (engine/train.py, engine/fused.py) and evaluation (engine/evaluation.py).
"""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ressenet.engine.config import Config
from ressenet.errors import RessenetError

__all__ = ["resolve_device", "resolve_precision", "resolve_channels_last", "resolve_eval_batch_size",
           "autocast_context", "load_data", "build_model", "versions", "data_fingerprint"]


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
    for name, ds in (("test", test_ds), ("validation", val_ds)):
        if ds is not None and len(ds) == 0:  # found now, not after the last iteration
            raise RessenetError(f"the {name} split of {d.dataset} at {d.data_root or 'the default root'} is empty; "
                                f"check the data folder (it needs {name}/<class>/ images) or --set data.test_limit")
    if len(train_ds) < cfg.optim.batch_size:
        raise RessenetError(f"the training split has {len(train_ds)} images, fewer than one batch of "
                            f"{cfg.optim.batch_size}; lower --batch-size")
    mean, std = normalization(d.dataset, d.normalization, train=train_ds) if d.normalization == "dataset" \
        else normalization(d.dataset, d.normalization)
    return {"train": train_ds, "val": val_ds, "test": test_ds, "mean": mean, "std": std,
            "fingerprint": data_fingerprint(train_ds, val_ds, test_ds)}


def data_fingerprint(*splits: Any) -> str:
    """SHA-256 (first 16 hex digits) of the decoded pixels, labels and class names of the splits a run uses.

    It identifies the data by content, wherever its folder is: resume and the grid's skip compare it, so a run is
    never continued, or counted as done, on other data. About 0.3 s for CIFAR's 60,000 images.
    """
    import hashlib

    h = hashlib.sha256()
    for ds in splits:
        if ds is None:
            h.update(b"none")
            continue
        h.update(repr((tuple(ds.images.shape), list(ds.classes))).encode())
        h.update(memoryview(ds.images.contiguous().numpy()).cast("B"))
        h.update(memoryview(ds.labels.contiguous().numpy()).cast("B"))
    return h.hexdigest()[:16]


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


def versions(device: torch.device) -> dict[str, Any]:
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
