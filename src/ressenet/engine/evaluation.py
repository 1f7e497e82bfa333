"""Evaluation: top-1/top-5/loss over a split (summed across data-parallel ranks), and of any saved checkpoint."""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ressenet.data import ImageDataset, eval_batches
from ressenet.data.constants import DATASET_INFO
from ressenet.engine.checkpoint import open_checkpoint
from ressenet.engine.config import Config, config_from_dict
from ressenet.engine.distributed import DistInfo, all_reduce_sum
from ressenet.engine.rundir import RunDir
from ressenet.engine.setup import (RunData, autocast_context, load_data, resolve_channels_last, resolve_device,
                                   resolve_eval_batch_size, resolve_precision)
from ressenet.errors import RessenetError
from ressenet.models import load_pretrained
from ressenet.weights import fetch_weights, read_header

__all__ = ["Scores", "evaluate", "eval_split", "evaluate_checkpoint", "evaluate_weights", "data_as_given"]


@dataclasses.dataclass(frozen=True)
class Scores:
    """What one evaluation measured: mean cross-entropy, top-1 and top-5 in percent, over ``images`` images."""

    loss: float
    top1: float
    top5: float
    images: int


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *, amp: Any = None,
             dist_info: DistInfo | None = None) -> Scores:
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
    return Scores(loss=loss / n, top1=100.0 * top1 / n, top5=100.0 * top5 / n, images=int(n))


def eval_split(model: nn.Module, ds: ImageDataset, data: RunData, cfg: Config, device: torch.device,
               channels_last: bool, amp: Any, dist_info: DistInfo) -> Scores:
    """:func:`evaluate` on ``ds`` (a split of ``data``, normalised with its mean and std) as training evaluates:
    the run's evaluation batch size, memory format, autocast context and ranks."""
    batches = eval_batches(ds, resolve_eval_batch_size(cfg.run.eval_batch_size, device), mean=data.mean,
                           std=data.std, device=device, channels_last=channels_last, rank=dist_info.rank,
                           world_size=dist_info.world_size)
    return evaluate(model, batches, amp=amp, dist_info=dist_info)


def data_as_given(cfg: Config, *, data_root: str | None, cache_dir: str | None, source: str | Path = "the run",
                  other_data: bool = False) -> Config:
    """A checkpoint's data settings as data, not instructions: no download, no cache it names (only the caller's
    ``cache_dir`` or the default). The caller's ``data_root`` wins; else the recorded one, which must exist here,
    unless ``other_data`` (the caller asked for another dataset: the default root). Changes ``cfg`` in place.

    Raises:
        RessenetError: If the recorded data root does not exist here and the caller gave none.
    """
    cfg.data.download = False
    cfg.data.cache_dir = cache_dir
    if data_root is not None:
        cfg.data.data_root = data_root
    elif cfg.data.data_root is not None and not Path(cfg.data.data_root).exists():
        if not other_data and not DATASET_INFO[cfg.data.dataset].generated:
            raise RessenetError(f"{source} records the data root {cfg.data.data_root}, which does not exist here "
                                f"({Path.cwd()}); pass --data-root with the folder or archive of its "
                                f"{cfg.data.dataset} data")
        cfg.data.data_root = None
    return cfg


def _eval_data(cfg: Config, *, data_root: str | None, cache_dir: str | None, batch_size: int | None,
               device: str, source: str | Path, other_data: bool) -> tuple[torch.device, RunData]:
    """The device and the data an evaluation of ``cfg`` (a checkpoint's or a weights header's) reads, its data
    settings taken as given (:func:`data_as_given`) and its batch size the caller's."""
    data_as_given(cfg, data_root=data_root, cache_dir=cache_dir, source=source, other_data=other_data)
    cfg.run.eval_batch_size = batch_size
    return resolve_device(device), load_data(cfg)


def evaluate_checkpoint(path: str | Path, *, dataset: str | None = None, data_root: str | None = None,
                        cache_dir: str | None = None, split: str = "test", device: str = "auto",
                        batch_size: int | None = None, allow_other_classes: bool = False) -> dict[str, Any]:
    """Top-1/top-5/loss of any checkpoint the engine wrote, on a split of its dataset (or another).

    The checkpoint is data, not instructions: it never makes evaluation download, unpack into a cache it names, or
    read from a folder it names unless that folder exists (then the result says so in ``data_root``). Downloads
    and the cache come only from the caller (``cache_dir``) and the defaults.

    Evaluating on other data is what eval is for, but it is said: classes other than the checkpoint's (names or
    order, which would score every swapped class as wrong) are refused unless ``allow_other_classes``; data whose
    content differs from the training data's gives a note, and ``same_data`` in the result is False.
    """
    _check_batch_size(batch_size)
    ckpt = open_checkpoint(path, fix=EVAL_FIX)
    state, cfg = ckpt.state, ckpt.config
    other_data = dataset is not None and dataset != cfg.data.dataset
    if dataset is not None:
        cfg.data.dataset = dataset
    dev, data = _eval_data(cfg, data_root=data_root, cache_dir=cache_dir, batch_size=batch_size, device=device,
                           source=path, other_data=other_data)
    same_data = _check_eval_data(path, state, cfg, data, allow_other_classes)
    num_classes = len(data.classes)
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise RessenetError(f"{path} was trained for {cfg.model.num_classes} classes but the data at "
                            f"{cfg.data.data_root or 'the default root'} has {num_classes}; pass the --dataset and "
                            f"--data-root it was trained on")
    model = ckpt.model(num_classes)
    precision = run_precision(state.get("precision"), Path(path).parent, cfg, dev)
    res = _evaluate_on(model, cfg, data, split, dev, path, "trained without a validation split", precision)
    return {"checkpoint": str(path), "model": cfg.model.name, "dataset": cfg.data.dataset, "split": split,
            "data_root": cfg.data.data_root, "iter": state.get("iter"), **res, "same_data": same_data}


def _check_batch_size(batch_size: int | None) -> None:
    """The one rule of both evaluations: a given batch size is a positive number of images."""
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise RessenetError(f"--batch-size {batch_size}: expected a positive number of images per batch")


def run_precision(recorded: Any, run_dir: Path | None, cfg: Config, device: torch.device) -> str:
    """The arithmetic a run evaluated in while training, so that evaluating its weights again reproduces its
    numbers: as recorded (the checkpoint's, else its run directory's ``config.yaml``), else what the run's
    ``--precision`` resolves to here. fp16 has no CPU kernels: fp32 there."""
    if recorded not in PRECISION_NAMES and run_dir is not None:
        recorded = RunDir(run_dir).recorded_choices().get("precision")
    precision = cfg.run.precision
    if precision == "auto":
        precision = recorded if recorded in PRECISION_NAMES else resolve_precision("auto", device)
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


PRECISION_NAMES = ("fp32", "bf16", "fp16")


EVAL_FIX = "pass a last.pt or best.pt that ressenet train wrote"


def _check_eval_data(path: str | Path, state: dict[str, Any], cfg: Config, data: RunData,
                     allow_other_classes: bool) -> bool:
    """Whether the data loaded is the checkpoint's training data; refuses other classes unless allowed."""
    classes = data.classes
    trained = state.get("classes")
    if isinstance(trained, list) and trained != classes and not allow_other_classes:
        if sorted(map(str, trained)) == sorted(map(str, classes)):
            how = "the same class names in another order"
        else:
            odd = [c for c in classes if c not in trained][:3] or [c for c in trained if c not in classes][:3]
            how = f"other classes ({', '.join(map(repr, odd))} ...)"
        raise RessenetError(f"the data at {cfg.data.data_root or 'the default root'} has {how} than {path} was "
                            f"trained on, so its labels mean other things; pass the data it was trained on, or "
                            f"--allow-other-classes to evaluate anyway")
    recorded = state.get("data_fingerprint")
    same = recorded is None or recorded == data.fingerprint
    if not same:
        warnings.warn(f"the data at {cfg.data.data_root or 'the default root'} is not the data {path} was trained on "
                      f"(fingerprint {data.fingerprint}, trained on {recorded})", stacklevel=2)
    return same


def _evaluate_on(model: nn.Module, cfg: Config, data: RunData, split: str, dev: torch.device,
                 path: str | Path, no_val: str, precision: str) -> dict[str, Any]:
    """top-1/top-5/loss/images of ``model`` on ``data``'s ``split``, as training evaluates (same memory format,
    same precision)."""
    if split == "val" and data.val is None:
        raise RessenetError(f"{path} was {no_val}; use --split test")
    channels_last = resolve_channels_last(cfg.run.channels_last, dev)
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    res = eval_split(model, data.split(split), data, cfg, dev, channels_last, autocast_context(precision, dev),
                     DistInfo())
    return {**dataclasses.asdict(res), "precision": precision}


def evaluate_weights(path: str | Path, *, dataset: str | None = None, data_root: str | None = None,
                     cache_dir: str | None = None, split: str = "test", device: str = "auto",
                     batch_size: int | None = None, sha256: str | None = None,
                     allow_other_classes: bool = False) -> dict[str, Any]:
    """Top-1/top-5/loss of a weights file ``ressenet export`` wrote (a path or URL), on a split of the data it was
    trained on (the header's config: the same test images, so the run's final test top-1 is reproduced) or of
    ``dataset``. The inputs are normalised as the weights were trained (the header's mean and std), whatever the
    data. As with checkpoints, the header's data settings are data: no download, no cache or folder it names.
    """
    _check_batch_size(batch_size)
    local, digest = fetch_weights(path, sha256=sha256, cache_dir=cache_dir)
    header = read_header(local)
    try:
        cfg = config_from_dict(header.get("config") or {}, where=f"{local} (its header's config)")
    except (ValueError, TypeError, AttributeError) as e:
        raise RessenetError(f"{local}: unreadable config in its header ({e})") from None
    other_data = dataset is not None and dataset != cfg.data.dataset
    if other_data:
        # The run's subset sizes belong to its own data (a smoke test's synthetic images), not to another dataset.
        cfg.data.dataset, cfg.data.train_limit, cfg.data.test_limit = dataset, 0, 0
    dev, data = _eval_data(cfg, data_root=data_root, cache_dir=cache_dir, batch_size=batch_size, device=device,
                           source=local, other_data=other_data)
    n = len(data.classes)
    if n != header["num_classes"]:
        raise RessenetError(f"{local} predicts {header['num_classes']} classes and {cfg.data.dataset} at "
                            f"{cfg.data.data_root or 'the default root'} has {n}; evaluate it on data with its classes")
    # The same rule as a checkpoint's: other class names mean the labels mean other things.
    recorded = header.get("data") or {}
    same_data = _check_eval_data(local, {"classes": recorded.get("classes"),
                                         "data_fingerprint": recorded.get("fingerprint")}, cfg, data,
                                 allow_other_classes)
    data = dataclasses.replace(data, mean=tuple(header["mean"]), std=tuple(header["std"]))
    model = load_pretrained(local)
    precision = run_precision((header.get("trained_with") or {}).get("precision"), None, cfg, dev)
    res = _evaluate_on(model, cfg, data, split, dev, local, "evaluated on data without a validation split "
                                                            "(data.val_split=0)", precision)
    return {"weights": str(local), "sha256": digest, "model": header["model"], "dataset": cfg.data.dataset,
            "split": split, "data_root": cfg.data.data_root, "iter": header.get("iters"), **res,
            "same_data": same_data}
