"""Front door of the data package: load a split by dataset name, normalisation constants, dataset summaries."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ressenet.data.archive import is_archive, unpack_to_cache
from ressenet.data.base import DataError, ImageDataset, channel_stats
from ressenet.data.cifar import describe_expected, load_cifar_split, locate
from ressenet.data.constants import (
    DATASET_INFO,
    ARCHIVES,
    DATASET_STATS,
    DATASETS,
    DEFAULT_ROOT,
    DOWNLOADABLE,
    PAPER_MEAN,
    PAPER_STD,
    SPLITS,
    join_names,
)
from ressenet.data.fetch import download as download_archive
from ressenet.data.imagefolder import load_imagefolder
from ressenet.data.synthetic import load_synthetic_split
from ressenet.files import default_cache_dir

_SYNTHETIC_OPTIONS = ("num_classes", "train_size", "test_size", "seed", "image_size")

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]


def _check(name: str, split: str | None = None) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; choose one of {', '.join(SPLITS)}")


def load_split(name: str, split: str, root: str | os.PathLike[str] | None = None, *, download: bool = False,
               cache_dir: str | os.PathLike[str] | None = None, **synthetic_kwargs: Any) -> ImageDataset:
    """Loads one split of a dataset into memory.

    Args:
        name: One of ``DATASETS``: ``"cifar10"``, ``"cifar100"``, ``"imagefolder"``, ``"synthetic"``.
        split: ``"train"`` or ``"test"``.
        root: Data root (default ``./data``). CIFAR: a folder holding ``cifar-10-batches-py/`` (or ``-bin/``, or
            ``cifar-100-python/`` / ``cifar-100-binary/``), such a folder itself, or an archive of one. Image folder:
            a folder (or .tar.gz/.tgz/.tar/.zip archive) holding ``train/<class>/`` and ``test/<class>/``.
            Ignored for synthetic data.
        download: CIFAR only: download the official python archive into ``root`` when no copy is found.
        cache_dir: Where archives are unpacked and decoded image folders cached (default: ``$RESSENET_CACHE``,
            else ``$XDG_CACHE_HOME/ressenet``, else ``~/.cache/ressenet``).
        **synthetic_kwargs: Synthetic only: ``num_classes``, ``train_size``, ``test_size``, ``seed``, ``image_size``.

    Returns:
        The split as an :class:`ImageDataset`.

    Raises:
        DataError: For anything wrong with the name, the options or the files, with a one-line fix.
    """
    return _load(name, (split,), root, download, cache_dir, synthetic_kwargs)[split]


def load_datasets(name: str, root: str | os.PathLike[str] | None = None, *, download: bool = False,
                  cache_dir: str | os.PathLike[str] | None = None, **synthetic_kwargs: Any) -> dict[str, ImageDataset]:
    """Loads both splits; arguments as :func:`load_split`. Returns ``{"train": ..., "test": ...}``."""
    return _load(name, SPLITS, root, download, cache_dir, synthetic_kwargs)


def _load(name: str, splits: tuple[str, ...], root: str | os.PathLike[str] | None, download: bool,
          cache_dir: str | os.PathLike[str] | None, synthetic_kwargs: dict[str, Any]) -> dict[str, ImageDataset]:
    for split in splits:
        _check(name, split)
    read = READERS[DATASET_INFO[name].reader]
    if read is not _read_synthetic and synthetic_kwargs:
        raise DataError(f"options {sorted(synthetic_kwargs)} apply only to the synthetic dataset, not {name}")
    return read(name, splits, root, cache_dir, download, synthetic_kwargs)


def _paths(root: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """The data root (default ``./data``) and the cache directory (default :func:`default_cache_dir`)."""
    root_path = Path(root if root is not None else DEFAULT_ROOT).expanduser()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root_path, cache


def _read_synthetic(name: str, splits: tuple[str, ...], root: str | os.PathLike[str] | None,
                    cache_dir: str | os.PathLike[str] | None, download: bool,
                    options: dict[str, Any]) -> dict[str, ImageDataset]:
    unknown = sorted(set(options) - set(_SYNTHETIC_OPTIONS))
    if unknown:
        raise DataError(f"unknown synthetic dataset options {unknown}; valid: {', '.join(_SYNTHETIC_OPTIONS)}")
    return {split: load_synthetic_split(split, **options) for split in splits}


def _read_imagefolder(name: str, splits: tuple[str, ...], root: str | os.PathLike[str] | None,
                      cache_dir: str | os.PathLike[str] | None, download: bool,
                      options: dict[str, Any]) -> dict[str, ImageDataset]:
    root_path, cache = _paths(root, cache_dir)
    if download:
        raise DataError(f"--download applies to {join_names(DOWNLOADABLE)} only; an image folder must already exist")
    return load_imagefolder(root_path, splits, cache)


def _read_cifar(name: str, splits: tuple[str, ...], root: str | os.PathLike[str] | None,
                cache_dir: str | os.PathLike[str] | None, download: bool,
                options: dict[str, Any]) -> dict[str, ImageDataset]:
    root_path, cache = _paths(root, cache_dir)
    search = unpack_to_cache(root_path, cache) if is_archive(root_path) else root_path
    found = locate(name, search)
    if found is None and download and not is_archive(root_path):
        download_archive(name, root_path)
        found = locate(name, root_path)
    if found is None:
        python_folder = ARCHIVES[(name, "python")].folder
        if any((d / "train").is_dir() and (d / "test").is_dir() for d in (search, *_subfolders(search))):
            raise DataError(f"{root_path} holds an image folder (train/<class>/, test/<class>/), not "
                            f"{DATASET_INFO[name].title}'s official files; read it with --dataset imagefolder")
        raise DataError(f"no {DATASET_INFO[name].title} found: looked for {describe_expected(name, search)}; "
                        f"fetch it with `ressenet data download --dataset {name} --data-root DIR` (or --download when "
                        f"training), or pass --data-root pointing at a folder holding {python_folder}/")
    return {split: load_cifar_split(name, split, *found) for split in splits}


def _subfolders(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir()) if path.is_dir() else []


# The readers the dataset table names (constants.py ``DatasetInfo.reader``): (name, splits, root, cache_dir,
# download, options) -> {split: ImageDataset}. A new dataset read as an existing one needs only its table row.
READERS: dict[str, Callable[..., dict[str, ImageDataset]]] = {
    "cifar": _read_cifar, "imagefolder": _read_imagefolder, "synthetic": _read_synthetic,
}


def normalization(name: str, mode: str = "paper", train: ImageDataset | None = None) -> Stats:
    """Per-channel mean and std (0..1 scale) to normalise a dataset with.

    Args:
        name: Dataset name (one of ``DATASETS``).
        mode: ``"paper"``: the released Res-SE-Net code's constants, used for every dataset (docs/design.md).
            ``"dataset"``: the official training-set statistics for cifar10/cifar100; for imagefolder and
            synthetic, computed from ``train``.
        train: The training split, required for ``mode="dataset"`` with imagefolder or synthetic.

    Returns:
        (mean, std), each three floats.

    Raises:
        DataError: Unknown name or mode, or ``train`` missing where needed.
    """
    _check(name)
    if mode == "paper":
        return PAPER_MEAN, PAPER_STD
    if mode != "dataset":
        raise DataError(f"unknown normalization mode {mode!r}; choose 'paper' or 'dataset'")
    if name in DATASET_STATS:
        return DATASET_STATS[name]
    if train is None:
        raise DataError(f"normalization mode 'dataset' for {name} is computed from the training set, and none was "
                        f"given; pass train=<the training ImageDataset> (or use mode 'paper')")
    return channel_stats(train.images)


def _split_info(ds: ImageDataset) -> dict[str, Any]:
    mean, std = channel_stats(ds.images)
    info: dict[str, Any] = {
        "format": ds.source,
        "description": ds.description,
        "path": ds.path,
        "count": len(ds),
        "num_classes": len(ds.classes),
        "classes": list(ds.classes),
        "class_counts": ds.class_counts(),
        "mean": [round(m, 8) for m in mean],
        "std": [round(s, 8) for s in std],
    }
    if ds.coarse_labels is not None and ds.coarse_classes is not None:
        info["num_coarse_classes"] = len(ds.coarse_classes)
        info["coarse_classes"] = list(ds.coarse_classes)
        info["coarse_class_counts"] = torch.bincount(ds.coarse_labels, minlength=len(ds.coarse_classes)).tolist()
    return info


def dataset_info(name: str, root: str | os.PathLike[str] | None = None, *, download: bool = False,
                 cache_dir: str | os.PathLike[str] | None = None, **synthetic_kwargs: Any) -> dict[str, Any]:
    """Summarises both splits of a dataset, for ``ressenet data info``.

    Returns:
        A JSON-able dict ``{"dataset", "root", "splits": {split: {format, description, path, count, num_classes,
        classes, class_counts, mean, std[, num_coarse_classes, coarse_classes, coarse_class_counts]}}}``; means and
        stds are per channel on the 0..1 scale.
    """
    splits = load_datasets(name, root, download=download, cache_dir=cache_dir, **synthetic_kwargs)
    return {
        "dataset": name,
        "root": None if name == "synthetic" else str(root if root is not None else DEFAULT_ROOT),
        "splits": {split: _split_info(ds) for split, ds in splits.items()},
    }


def format_info(info: dict[str, Any]) -> str:
    """Renders :func:`dataset_info`'s dict as a plain-text report (summary table, then per-class counts)."""
    splits: dict[str, dict[str, Any]] = info["splits"]
    lines = [f"dataset: {info['dataset']}" + (f"   root: {info['root']}" if info.get("root") else "")]
    header = f"{'split':<6} {'format':<16} {'images':>7} {'classes':>7}  {'mean (R G B)':<22}  {'std (R G B)':<22}"
    lines += ["", header, "-" * len(header)]
    for split, s in splits.items():
        mean = " ".join(f"{v:.4f}" for v in s["mean"])
        std = " ".join(f"{v:.4f}" for v in s["std"])
        lines.append(f"{split:<6} {s['format']:<16} {s['count']:>7} {s['num_classes']:>7}  {mean:<22}  {std:<22}")
    lines.append("")
    lines += [f"{split}: {s['description']}" for split, s in splits.items()]

    def counts_table(title: str, key_names: str, key_counts: str) -> list[str]:
        first = next(iter(splits.values()))
        names = first[key_names]
        width = max(12, *(len(n) for n in names))
        out = ["", f"{title:<{width}} " + " ".join(f"{sp:>7}" for sp in splits)]
        for i, n in enumerate(names):
            out.append(f"{n:<{width}} " + " ".join(f"{s[key_counts][i]:>7}" for s in splits.values()))
        return out

    lines += counts_table("class", "classes", "class_counts")
    if all("coarse_classes" in s for s in splits.values()):
        lines += counts_table("superclass", "coarse_classes", "coarse_class_counts")
    return "\n".join(line.rstrip() for line in lines)
