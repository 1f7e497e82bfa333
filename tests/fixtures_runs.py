"""Fake run directories and a fake trainer for the grid and report tests: nothing here trains."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ressenet.data.constants import CIFAR10_CLASSES
from ressenet.engine.config import Config, apply_overrides

DATA = {
    "cifar10": {"source": "cifar10-python",
                "description": "CIFAR-10 train (official python) at data/cifar-10-batches-py",
                "num_classes": 10, "classes": list(CIFAR10_CLASSES), "train_size": 50000, "test_size": 10000,
                "val_size": 0},
    "cifar100": {"source": "cifar100-python", "description": "CIFAR-100 (official python)", "num_classes": 100,
                 "classes": [f"c{i}" for i in range(100)], "train_size": 50000, "test_size": 10000, "val_size": 0},
    "imagefolder": {"source": "imagefolder",
                    "description": "image folder /x/cifar10-jpeg.tar.gz (10 classes, JPEG), train split", "lossless": False,
                    "num_classes": 10, "classes": list(CIFAR10_CLASSES), "train_size": 50000, "test_size": 10000,
                    "val_size": 0},
    "synthetic": {"source": "synthetic", "description": "synthetic train (10 classes, 256 images, seed 0)",
                  "num_classes": 10, "classes": [str(i) for i in range(10)], "train_size": 256, "test_size": 128,
                  "val_size": 0},
}


def run_config(model: str, dataset: str, seed: int, out: Path, overrides: dict[str, Any] | None = None) -> Config:
    return apply_overrides(Config(), {**(overrides or {}), "model.name": model, "data.dataset": dataset,
                                      "run.seed": seed, "run.out": str(out)}).validate()


def make_run(root: Path, name: str, *, model: str, dataset: str = "cifar10", seed: int = 0, top1: float = 90.0,
             top5: float = 99.0, best_top1: float | None = None, best_top5: float | None = None,
             selected: tuple[float, float] | None = None, iters: int = 100, finished: bool = True,
             overrides: dict[str, Any] | None = None, params: int = 1000, data: dict[str, Any] | None = None,
             last_iter: int | None = None, config: Config | None = None) -> Path:
    """A run directory as ``ressenet train --out`` leaves it (finished: with ``summary.json``).

    ``config`` (e.g. a grid cell's) replaces the one built from model, dataset, seed, iters and overrides.
    """
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or run_config(model, dataset, seed, out, {"optim.iters": iters, "optim.milestones": [iters // 2],
                                                          **(overrides or {})})
    iters = cfg.optim.iters
    tree = cfg.to_dict()
    (out / "config.yaml").write_text(yaml.safe_dump({**tree, "meta": {"python": "3.11", "torch": "2.13.0",
                                                                      "ressenet": "0.1.0", "git_commit": "abc123",
                                                                      "device": "cpu"}}))
    stop = iters if finished else (last_iter if last_iter is not None else iters // 2)
    lines = []
    for it in range(10, stop + 1, 10):
        lines.append({"kind": "train", "iter": it, "epoch": 0, "lr": 0.1, "train_loss": 2.3 * 0.98 ** it + seed * 0.01,
                      "train_top1": 10 + it / 10, "images_per_second": 100.0, "time": it * 0.1})
    if finished:
        lines.append({"kind": "eval", "iter": iters, "epoch": 1, "lr": 0.01, "train_loss": 0.5, "train_top1": 80.0,
                      "images_per_second": 100.0, "time": iters * 0.1, "test_top1": top1, "test_top5": top5,
                      "test_loss": 0.4})
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if finished:
        summary = {
            "model": model, "dataset": dataset, "data": data or DATA[dataset], "seed": seed, "iters": iters,
            "params": params, "test_top1": top1, "test_top5": top5, "test_loss": 0.4,
            "best_test_top1": best_top1 if best_top1 is not None else top1,
            "best_test_top5": best_top5 if best_top5 is not None else top5, "best_test_iter": iters,
            "val_top1": None, "best_val_top1": None, "best_val_iter": None,
            "selected_test_top1": selected[0] if selected else None,
            "selected_test_top5": selected[1] if selected else None,
            "wall_seconds": 12.5, "train_images_per_second": 1000.0, "config": tree,
        }
        (out / "summary.json").write_text(json.dumps(summary))
    return out


# A stand-in for `ressenet train`: it writes config.yaml, appends to metrics.jsonl (continuing after the last line
# when one exists: a resume) and writes summary.json. It records each invocation and its CUDA_VISIBLE_DEVICES.
_FAKE_TRAINER = r"""
import json, os, sys, time
p = json.loads(sys.argv[1])
out = p["out"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "invocations.txt"), "a") as f:
    f.write(os.environ.get("CUDA_VISIBLE_DEVICES", "-") + "\n")
print("fake trainer for", out)
if p.get("fail"):
    print("simulated failure", file=sys.stderr)
    sys.exit(3)
time.sleep(p.get("sleep", 0))
with open(os.path.join(out, "config.yaml"), "w") as f:
    json.dump(p["config"], f)
start = 0
mpath = os.path.join(out, "metrics.jsonl")
if os.path.exists(mpath):
    lines = [l for l in open(mpath).read().splitlines() if l.strip()]
    start = json.loads(lines[-1])["iter"] if lines else 0
print("resumed from", start)
iters = p["config"]["optim"]["iters"]
with open(mpath, "a") as f:
    for it in range(start + 1, iters + 1):
        f.write(json.dumps({"kind": "train", "iter": it, "epoch": 0, "lr": 0.1, "train_loss": 2.0 / it,
                            "train_top1": 50.0, "images_per_second": 1.0, "time": 0.0}) + "\n")
summary = {"model": p["config"]["model"]["name"], "dataset": p["config"]["data"]["dataset"], "data": p["data"],
           "seed": p["config"]["run"]["seed"], "iters": iters, "params": 1000,
           "test_top1": 50.0 + p["config"]["run"]["seed"],
           "test_top5": 90.0, "test_loss": 1.0, "best_test_top1": 51.0, "best_test_top5": 91.0, "best_test_iter": iters,
           "selected_test_top1": None, "selected_test_top5": None, "resumed_from": start,
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "wall_seconds": 1.0,
           "config": p["config"]}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f)
"""


def make_cell_run(cell, **kwargs: Any) -> Path:
    """A run directory for a grid cell, with the cell's own config (finished unless ``finished=False``)."""
    return make_run(cell.out.parent, cell.name, model=cell.model, dataset=cell.dataset, seed=cell.seed,
                    config=cell.config, **kwargs)


def fake_trainer(fail: set[str] | None = None, sleep: float = 0.0):
    """A ``command`` for ``run_grid``: runs the fake trainer above instead of ``ressenet train``."""
    def command(cell) -> list[str]:
        payload = {"out": str(cell.out), "config": cell.config.to_dict(), "fail": cell.name in (fail or set()),
                   "sleep": sleep, "data": DATA.get(cell.dataset, DATA["synthetic"])}
        return [sys.executable, "-c", _FAKE_TRAINER, json.dumps(payload)]
    return command
