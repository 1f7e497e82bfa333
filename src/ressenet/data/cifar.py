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

from ressenet.data.archive import MAX_MEMBER_BYTES
from ressenet.data.base import DataError, ImageDataset, os_error_text, unreadable_root
from ressenet.data.constants import (
    DATASET_INFO,
    ARCHIVES,
    CIFAR10_RECORD_BYTES,
    CIFAR100_RECORD_BYTES,
    NUM_CLASSES,
    PIXELS_PER_IMAGE,
    ArchiveSpec,
)


# A batch or meta file is refused unread above this size: no official one exceeds CIFAR-100's training file (about
# 155 MB), and the limit is the one the archive reader applies to official members (archive.MAX_MEMBER_BYTES).
MAX_FILE_BYTES = MAX_MEMBER_BYTES
# Class-name text files hold 10 or 100 short names (under 1.5 KB); 1 MiB refuses any other file before it is read.
MAX_NAMES_BYTES = 1 << 20

# Globals that benign pickles written by Python 3 reference but the official Python-2 files never do: byte strings
# in protocol 0-2 (_codecs.encode), arrays in protocol 5 (_frombuffer), numpy scalars, bytearrays. Refused like any
# other global (each is a function call the restricted loader does not make), but reported as what they are.
_PYTHON3_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "bytearray"),
    ("copyreg", "_reconstructor"),
}


def _reconstruct() -> Any:
    # numpy 2 renamed numpy.core to numpy._core; importing the old name only to resolve a pickle would warn.
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as fn  # type: ignore[no-redef]
    return fn


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only what the official CIFAR pickles contain: numpy arrays and dtypes."""

    def __init__(self, file: io.BufferedIOBase, path: Path, protocol: int | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path
        self.protocol = protocol

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if (module, name) in _PYTHON3_GLOBALS:
            proto = f"protocol {self.protocol}, " if self.protocol is not None else ""
            raise DataError(f"refusing to unpickle {self.path}: it is a pickle written by another Python or pickle "
                            f"protocol ({proto}it references {module}.{name}), which the safe loader does not "
                            f"accept: it reads the official CIFAR files, Python-2 pickles whose only references are "
                            f"numpy's _reconstruct, ndarray and dtype; use the official file (delete it and download "
                            f"the archive again), or re-save the dictionary with pickle protocol 4 "
                            f"(pickle.dump(d, f, protocol=4)) holding numpy arrays, lists of ints and strings")
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
        _check_size(path, MAX_FILE_BYTES)
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            protocol = head[1] if len(head) == 2 and head[0] == 0x80 else None
            obj = RestrictedUnpickler(f, path, protocol).load()
    except DataError:
        raise
    except OSError as e:
        raise _read_error(path, e) from e
    except Exception as e:  # pickle raises many types on garbage: UnpicklingError, EOFError, ValueError, ...
        raise DataError(f"{path} is truncated or malformed ({type(e).__name__}: {e}); delete it and download the "
                        f"archive again") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dictionary of an official CIFAR file; "
                        f"delete it and download the archive again")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_error(path: Path, e: OSError) -> DataError:
    return DataError(f"cannot read {path}: {os_error_text(e)}; check the file exists and is readable")


def _check_size(path: Path, limit: int) -> None:
    """Refuses, before reading it, a file larger than any official CIFAR file of its kind can be."""
    size = path.stat().st_size
    if size > limit:
        raise DataError(f"refusing {path}: it is {size} bytes, above the limit of {limit} bytes for this file (no "
                        f"official CIFAR file of its kind is larger); it is not an official file, delete it and "
                        f"download the archive again")


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
        _check_size(path, MAX_FILE_BYTES)
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise _read_error(path, e) from e
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
        _check_size(path, MAX_NAMES_BYTES)
        raw = path.read_bytes()
    except OSError as e:
        raise _read_error(path, e) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); a class-name "
                        f"file holds one UTF-8 name per line: re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8) "
                        f"or download the archive again") from e
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
    try:
        for variant in ("python", "binary"):
            spec = ARCHIVES[(name, variant)]
            if (root / spec.folder).is_dir():
                return variant, root / spec.folder
            if root.is_dir() and _holds(root, spec):
                return variant, root
    except OSError as e:  # e.g. a data root without read/search permission: is_dir() raises PermissionError
        raise _root_error(root, e) from e
    return None


def _root_error(root: Path, e: OSError) -> DataError:
    return unreadable_root("the data root", root, e, "u+rx")


def describe_expected(name: str, root: Path) -> str:
    """One clause telling what :func:`locate` looks for, for error messages."""
    py, b = ARCHIVES[(name, "python")], ARCHIVES[(name, "binary")]
    return f"{root}/{py.folder}/ (python) or {root}/{b.folder}/ (binary)"


def load_cifar_split(name: str, split: str, variant: str, folder: Path) -> ImageDataset:
    """Loads one split of CIFAR-10/100 from an official folder found by :func:`locate`."""
    spec = ARCHIVES[(name, variant)]
    files = spec.train_files if split == "train" else spec.test_files
    try:
        missing = [m for m in (*files, *spec.meta_files) if not (folder / m).is_file()]
    except OSError as e:
        raise _root_error(folder, e) from e
    if missing:
        raise DataError(f"{folder} is an incomplete {spec.folder} folder: missing {', '.join(missing)}; delete the "
                        f"folder and download it again (`ressenet data download`, or --download when training)")
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
        raise DataError(f"{folder / spec.meta_files[0]} lists {len(classes)} class names, "
                        f"{DATASET_INFO[name].title} has {NUM_CLASSES[name]}; download the archive again")
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
        description=f"{DATASET_INFO[name].title} {split} (official {kind}) at {folder}",
        path=str(folder),
    )
