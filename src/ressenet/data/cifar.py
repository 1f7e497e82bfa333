"""Readers for the official CIFAR-10/100 archives (python pickles and binary records) and their on-disk layouts.

The python variants are Python-2 pickles; ``pickle.load`` on an untrusted one runs arbitrary code, so they are read
with :class:`RestrictedUnpickler`, which resolves only the three numpy globals the official files reference.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ressenet.data.base import DataError, ImageDataset
from ressenet.data.constants import (
    ARCHIVES,
    CIFAR10_RECORD_BYTES,
    CIFAR100_RECORD_BYTES,
    NUM_CLASSES,
    PIXELS_PER_IMAGE,
    ArchiveSpec,
)

_DISPLAY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _reconstruct() -> Any:
    # numpy 2 renamed numpy.core to numpy._core; importing the old name only to resolve a pickle would warn.
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as fn  # type: ignore[no-redef]
    return fn


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only what the official CIFAR pickles contain: numpy arrays and dtypes."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise DataError(f"refusing to unpickle {self.path}: it references {module}.{name}, which no official CIFAR "
                        f"file contains, so the file is corrupt or malicious; delete it and download the archive again")


def load_pickle(path: str | Path) -> dict[str, Any]:
    """Loads one official CIFAR python batch/meta file safely.

    Args:
        path: The pickle file.

    Returns:
        Its dictionary, with str keys.

    Raises:
        DataError: If the file is missing, malformed, or references anything beyond numpy arrays.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file exists and is readable") from e
    except Exception as e:  # pickle raises many types on garbage: UnpicklingError, EOFError, ValueError, ...
        raise DataError(f"{path} is truncated or malformed ({type(e).__name__}: {e}); delete it and download the "
                        f"archive again") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dictionary of an official CIFAR file; "
                        f"delete it and download the archive again")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(obj: dict[str, Any], key: str, path: Path) -> list[str]:
    if key not in obj:
        raise DataError(f"{path} lacks the key {key!r}; it is not an official CIFAR meta file, download it again")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in obj[key]]


def _pickle_arrays(path: Path, label_keys: tuple[str, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    obj = load_pickle(path)
    for key in ("data", *label_keys):
        if key not in obj:
            raise DataError(f"{path} lacks the key {key!r}; it is not an official CIFAR batch file, download it again")
    data = obj["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (PIXELS_PER_IMAGE,):
        raise DataError(f"{path}: 'data' is not an (N, {PIXELS_PER_IMAGE}) uint8 array "
                        f"(got {getattr(data, 'shape', type(data).__name__)}); download the archive again")
    labels = []
    for key in label_keys:
        lab = np.asarray(obj[key], dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise DataError(f"{path}: {key!r} has {lab.size} entries for {data.shape[0]} images; download it again")
        labels.append(lab)
    return data.reshape(-1, 3, 32, 32), labels


def read_binary_batch(path: str | Path, *, coarse: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reads one official CIFAR binary batch file (any number of records).

    CIFAR-10 records are 1 label byte + 3072 pixel bytes; CIFAR-100 records (``coarse=True``) are 1 coarse-label
    byte, 1 fine-label byte, then the pixels. Pixels are the red, green and blue 32x32 planes, row-major.

    Args:
        path: The ``.bin`` file.
        coarse: Whether the records are CIFAR-100's (with a coarse label first).

    Returns:
        (images (N, 3, 32, 32) uint8, labels (N,) int64, coarse labels (N,) int64 or None).

    Raises:
        DataError: If the file is missing, or its size is not a whole number of records.
    """
    path = Path(path)
    record = CIFAR100_RECORD_BYTES if coarse else CIFAR10_RECORD_BYTES
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file exists and is readable") from e
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path} is truncated or malformed: {raw.size} bytes is not a whole number of "
                        f"{record}-byte records; delete it and download the archive again")
    rows = raw.reshape(-1, record)  # (N, record)
    n_label = record - PIXELS_PER_IMAGE
    images = np.ascontiguousarray(rows[:, n_label:]).reshape(-1, 3, 32, 32)
    if coarse:
        return images, rows[:, 1].astype(np.int64), rows[:, 0].astype(np.int64)
    return images, rows[:, 0].astype(np.int64), None


def read_label_names(path: str | Path) -> list[str]:
    """Reads a binary-variant class-name file (one name per line, blank lines ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file exists and is readable") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def _holds(folder: Path, spec: ArchiveSpec) -> bool:
    # A folder holding any file of a layout is taken as that layout, so an incomplete copy is reported as such
    # (naming what is missing) rather than as "nothing found".
    return any((folder / m).is_file() for m in spec.members)


def locate(name: str, root: Path) -> tuple[str, Path] | None:
    """Finds an official archive's folder for ``name`` under or at ``root``; python variant first.

    Returns:
        (variant, folder) with variant ``"python"`` or ``"binary"``, or None when neither layout is there.
    """
    for variant in ("python", "binary"):
        spec = ARCHIVES[(name, variant)]
        if (root / spec.folder).is_dir():
            return variant, root / spec.folder
        if root.is_dir() and _holds(root, spec):
            return variant, root
    return None


def describe_expected(name: str, root: Path) -> str:
    """One clause telling what :func:`locate` looks for, for error messages."""
    py, b = ARCHIVES[(name, "python")], ARCHIVES[(name, "binary")]
    return f"{root}/{py.folder}/ (python) or {root}/{b.folder}/ (binary)"


def load_cifar_split(name: str, split: str, variant: str, folder: Path) -> ImageDataset:
    """Loads one split of CIFAR-10/100 from an official folder found by :func:`locate`."""
    spec = ARCHIVES[(name, variant)]
    files = spec.train_files if split == "train" else spec.test_files
    missing = [m for m in (*files, *spec.meta_files) if not (folder / m).is_file()]
    if missing:
        raise DataError(f"{folder} is an incomplete {spec.folder} folder: missing {', '.join(missing)}; delete the "
                        f"folder and download it again (--download)")
    coarse = coarse_classes = None
    if variant == "python":
        keys = ("labels",) if name == "cifar10" else ("fine_labels", "coarse_labels")
        parts = [_pickle_arrays(folder / f, keys) for f in files]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1][0] for p in parts])
        meta_path = folder / spec.meta_files[0]
        meta = load_pickle(meta_path)
        if name == "cifar10":
            classes = _names(meta, "label_names", meta_path)
        else:
            coarse = np.concatenate([p[1][1] for p in parts])
            classes = _names(meta, "fine_label_names", meta_path)
            coarse_classes = _names(meta, "coarse_label_names", meta_path)
    else:
        parts3 = [read_binary_batch(folder / f, coarse=name == "cifar100") for f in files]
        images = np.concatenate([p[0] for p in parts3]) if len(parts3) > 1 else parts3[0][0]
        labels = np.concatenate([p[1] for p in parts3])
        classes = read_label_names(folder / spec.meta_files[0])
        if name == "cifar100":
            coarse = np.concatenate([p[2] for p in parts3])  # type: ignore[misc]
            coarse_classes = read_label_names(folder / spec.meta_files[1])
    if len(classes) != NUM_CLASSES[name]:
        raise DataError(f"{folder / spec.meta_files[0]} lists {len(classes)} class names, {_DISPLAY[name]} has "
                        f"{NUM_CLASSES[name]}; download the archive again")
    for what, lab, k in (("label", labels, len(classes)),
                         ("coarse label", coarse, len(coarse_classes or ()))):
        if lab is not None and lab.size and (lab.min() < 0 or lab.max() >= k):
            raise DataError(f"{folder}: {split} {what}s range up to {int(lab.max())} but there are only {k} "
                            f"classes; the files are corrupt, download the archive again")
    kind = "python archive" if variant == "python" else "binary archive"
    return ImageDataset(
        lossless=True,
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        classes=classes,
        coarse_labels=None if coarse is None else torch.from_numpy(coarse),
        coarse_classes=coarse_classes,
        source=f"{name}-{variant}",
        description=f"{_DISPLAY[name]} {split} (official {kind}) at {folder}",
        path=str(folder),
    )
