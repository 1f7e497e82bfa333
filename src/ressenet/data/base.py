"""The in-memory dataset every source loads into, its error type, and splitting/statistics helpers."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """A problem with the user's data or data options.

    The message is one line saying what is wrong, which file or path, and how to fix it; newlines in the message
    (e.g. from an OS error) are folded so that a CLI can print it as is.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def os_error_text(e: OSError) -> str:
    """An OS error as ``[Errno 28] No space left on device``, without the file name that ``str(e)`` appends (callers
    name the path themselves, in the user's terms)."""
    if e.errno is not None and e.strerror:
        return f"[Errno {e.errno}] {e.strerror}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def unreadable_root(what: str, root: Path, e: OSError, chmod: str) -> DataError:
    """The one-line error for a data root that cannot be read: ``what`` names it (``"the data root"``), ``e``'s
    file is added when it is not the root itself, and ``chmod`` is the suggested permission fix (``"u+rx"``)."""
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(root) else ""
    return DataError(f"cannot read {what} {root}{where}: {os_error_text(e)}; make it readable (e.g. chmod {chmod}), "
                     f"or pass --data-root to a folder you can read")


@dataclass
class ImageDataset:
    """A whole split held in memory as uint8 pixels.

    Attributes:
        images: (N, 3, H, W) uint8 CPU tensor, contiguous (H = W = 32 for every built-in source).
        labels: (N,) int64 tensor of class indices into ``classes``.
        classes: Class names; label i is ``classes[i]``.
        coarse_labels: (N,) int64 superclass indices (CIFAR-100 only), else None.
        coarse_classes: Superclass names (CIFAR-100 only), else None.
        source: The format found, e.g. ``"cifar10-python"``, ``"cifar100-binary"``, ``"imagefolder"``, ``"synthetic"``.
        description: Human-readable origin, e.g. ``"CIFAR-10 (official python archive) at /x"``.
        path: The file or folder it was read from, or None (synthetic, or built in memory).
        lossless: Whether the stored pixels are the original ones: True for the official CIFAR formats, synthetic
            data and PNG folders, False when any image was stored lossily (JPEG), None when unknown. Reports label
            runs by it ("CIFAR-10 (JPEG copy)").
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    coarse_labels: torch.Tensor | None = None
    coarse_classes: list[str] | None = None
    source: str = "memory"
    description: str = "in-memory dataset"
    path: str | None = None
    lossless: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4 \
                or self.images.shape[1] != 3:
            got = tuple(self.images.shape) if isinstance(self.images, torch.Tensor) else type(self.images).__name__
            raise DataError(f"ImageDataset images must be a uint8 tensor of shape (N, 3, H, W), got {got} "
                            f"{getattr(self.images, 'dtype', '')}; convert pixels to uint8 0..255 before wrapping them")
        n = self.images.shape[0]
        self.images = self.images.cpu().contiguous()
        self.labels = _as_labels(self.labels, n, len(self.classes), "labels")
        self.classes = list(self.classes)
        if self.coarse_labels is not None:
            if self.coarse_classes is None:
                raise DataError("ImageDataset has coarse_labels but no coarse_classes; pass both or neither")
            self.coarse_labels = _as_labels(self.coarse_labels, n, len(self.coarse_classes), "coarse_labels")
            self.coarse_classes = list(self.coarse_classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """Returns a new dataset holding the given samples (copied), in the given order."""
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices,
                              dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise DataError(f"subset indices out of range for a dataset of {len(self)} samples ({self.description})")
        return replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            coarse_labels=None if self.coarse_labels is None else self.coarse_labels[idx],
        )

    def class_counts(self) -> list[int]:
        """Number of samples per class, indexed like ``classes``."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def _as_labels(labels: torch.Tensor | Sequence[int] | np.ndarray, n: int, num_classes: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.shape != (n,):
        raise DataError(f"ImageDataset {what} must be {n} integers (one per image), got shape {tuple(t.shape)} "
                        f"{t.dtype}")
    t = t.to(device="cpu", dtype=torch.int64).contiguous()
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise DataError(f"ImageDataset {what} range {int(t.min())}..{int(t.max())} does not fit {num_classes} "
                        f"class names; check the label and class-name files agree")
    return t


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and population std of uint8 images, on the 0..1 scale.

    Computed exactly from 256-bin histograms, which needs no float copy of the images (150 MB of pixels would take
    1.2 GB as float64) and gives the same digits however large the set is.

    Args:
        images: (N, C, H, W) uint8 tensor.

    Returns:
        (mean, std), each a tuple with one float per channel.
    """
    if images.numel() == 0:
        raise DataError("cannot compute pixel statistics of an empty dataset; check the split has images")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        count = hist.sum()
        mean = (hist * values).sum() / count
        var = (hist * (values - mean) ** 2).sum() / count
        means.append(float(mean) / 255.0)
        stds.append(float(var.sqrt()) / 255.0)
    return tuple(means), tuple(stds)  # type: ignore[return-value]


def train_val_split(ds: ImageDataset, val_size: int = 5000, seed: int = 0) -> tuple[ImageDataset, ImageDataset | None]:
    """Holds out a stratified validation set from a training set (He et al.'s 45k/5k protocol).

    Each class contributes in proportion to its size (largest-remainder rounding, ties to the lower class index),
    and which samples go is drawn from a generator seeded with ``seed`` alone, so the split is the same on every
    machine and run. Both parts keep the original sample order.

    Args:
        ds: The training set.
        val_size: Number of validation samples; 0 returns ``(ds, None)``.
        seed: Seed of the split (independent of the training seed, so seeds of a grid share one split if wanted).

    Returns:
        (train part, validation part or None).

    Raises:
        DataError: If ``val_size`` is not an integer in ``[0, len(ds))``.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or not 0 <= val_size < len(ds):
        raise DataError(f"val_size={val_size!r} is invalid for a training set of {len(ds)} images "
                        f"({ds.description}); use an integer from 0 (no validation split) to {len(ds) - 1}")
    if val_size == 0:
        return ds, None
    counts = np.asarray(ds.class_counts(), dtype=np.int64)
    quotas = val_size * counts / len(ds)
    take = np.floor(quotas).astype(np.int64)
    short = val_size - int(take.sum())
    # Stable sort on the negated remainders so equal remainders go to the lower class index.
    order = np.argsort(-(quotas - take), kind="stable")
    take[order[:short]] += 1

    gen = torch.Generator().manual_seed(int(seed))
    is_val = torch.zeros(len(ds), dtype=torch.bool)
    for c in range(len(ds.classes)):
        members = torch.nonzero(ds.labels == c).flatten()
        if take[c]:
            is_val[members[torch.randperm(len(members), generator=gen)[: take[c]]]] = True
    train_idx = torch.nonzero(~is_val).flatten()
    val_idx = torch.nonzero(is_val).flatten()
    train = ds.subset(train_idx)
    val = ds.subset(val_idx)
    tag = f"{val_size} of {len(ds)} held out, seed {seed}"
    train.description = f"{ds.description} [training part: {tag}]"
    val.description = f"{ds.description} [validation part: {tag}]"
    return train, val


def mix_seed(*parts: object) -> int:
    """A 63-bit seed derived from any tuple of values, stable across processes and platforms.

    Used wherever several independent streams come from one user seed (splits, epochs): consecutive integers as
    seeds would give correlated-looking streams for some generators, a hash does not.
    """
    text = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1
