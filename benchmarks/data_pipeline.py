"""Augmented training batches per second: ressenet's TrainLoader against a torchvision DataLoader.

Both produce the paper's augmentation (zero-pad 4 + random 32x32 crop, horizontal flip p = 0.5, per-channel
normalisation; docs/design.md) as normalised float32 (128, 3, 32, 32) batches on the CPU, from the same images:

* ``TrainLoader``: pixels held as one uint8 tensor, batches gathered with tensor ops (ressenet.data.loader);
* baseline: a map-style dataset that turns each image into a PIL image (as torchvision's CIFAR10 does) and applies
  ``RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(...)``, read by a
  ``torch.utils.data.DataLoader`` with ``--workers`` worker processes (default 2).

Each is warmed up, then timed over ``--repeats`` runs of ``--batches`` batches; medians and their ratio are printed.

torchvision does not import beside the project's torch 2.13.0 CPU build; run this from a separate environment::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1 && .venv-bench/bin/pip install -e .
    .venv-bench/bin/python benchmarks/data_pipeline.py            # CIFAR-10 JPEG copy from ../shared/data
    .venv-bench/bin/python benchmarks/data_pipeline.py --dataset synthetic
    python3 benchmarks/data_pipeline.py --baseline none                   # TrainLoader only, no torchvision
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ressenet.data import TrainLoader, load_split, normalization

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

DEFAULT_ROOT = common.REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def time_batches(next_batch, batches: int, repeats: int, warmup: int) -> list[float]:
    """Batches per second of ``next_batch()`` over ``repeats`` timed runs, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        next_batch()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next_batch()
        rates.append(batches / (time.perf_counter() - start))
    return rates


def endless(loader):
    """next() over a DataLoader that restarts it at the end of each epoch (persistent workers stay up)."""
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    return next_batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["imagefolder", "synthetic"], default="imagefolder")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT, help="image folder or archive (imagefolder)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache (default: ressenet's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches before timing")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--baseline", choices=["auto", "none"], default="auto",
                        help="auto: also time the torchvision DataLoader (needs torchvision); none: TrainLoader only")
    args = parser.parse_args()

    torchvision, tv_error = None, ""
    if args.baseline == "auto":
        try:
            import torchvision
            from torchvision import transforms
        except Exception as e:  # noqa: BLE001  ImportError, or an operator-registration error against mismatched torch
            tv_error = f"{type(e).__name__}: {e}"

    tv_version = torchvision.__version__ if torchvision else "not used" if args.baseline == "none" else "NOT AVAILABLE"
    print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {tv_version}, "
          f"numpy {np.__version__}")
    print(f"cpu: {common.cpu_model()}, {os.cpu_count()} logical cores, "
          f"torch intra-op threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    if args.dataset == "synthetic":
        ds = load_split("synthetic", "train")
    else:
        ds = load_split("imagefolder", "train", args.data_root, cache_dir=args.cache_dir)
    print(f"data: {ds.description}: {len(ds)} images (loaded in {time.perf_counter() - t0:.1f} s)")
    mean, std = normalization(args.dataset)
    print(f"batch {args.batch_size}, {args.repeats} runs of {args.batches} batches after {args.warmup} warm-up "
          f"batches; figures are batches per second (median, min..max)")

    loader = TrainLoader(ds, args.batch_size, mean=mean, std=std, seed=0)
    ours = time_batches(loader.next, args.batches, args.repeats, args.warmup)
    print(f"  TrainLoader (cpu, {torch.get_num_threads()} threads): {statistics.median(ours):8.1f}  "
          f"({min(ours):.1f}..{max(ours):.1f})")

    if args.baseline == "none":
        return 0
    if torchvision is None:
        print(f"torchvision is not importable here ({tv_error}); the DataLoader baseline needs it. Install it in a "
              f"separate venv: python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.14.1 "
              f"torchvision==0.29.1 && .venv-bench/bin/pip install -e .", file=sys.stderr)
        return 2

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    baseline_ds = common.PILImages(ds.images.permute(0, 2, 3, 1).contiguous().numpy(), ds.labels.numpy(), transform)
    dl = torch.utils.data.DataLoader(baseline_ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                     num_workers=args.workers, persistent_workers=args.workers > 0)
    theirs = time_batches(endless(dl), args.batches, args.repeats, args.warmup)
    print(f"  DataLoader + torchvision transforms ({args.workers} workers): {statistics.median(theirs):8.1f}  "
          f"({min(theirs):.1f}..{max(theirs):.1f})")
    print(f"speed-up (median / median): {statistics.median(ours) / statistics.median(theirs):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
