"""Batched, on-device training and evaluation loaders (the training engine's hot loop).

The paper's augmentation (zero-pad 4, random 32x32 crop, horizontal flip with p = 0.5, then per-channel
normalisation; docs/design.md) is applied to a whole batch with two tensor ops and no per-sample Python:

* The constructor puts the dataset on the device once, zero-padded, together with a horizontally mirrored copy
  (shape (2N, 3, 40, 40) uint8, 3.1x the raw pixels). ``unfold`` views it as every possible 32x32 window, so a batch
  of crops is a single advanced-indexing gather ``windows[image, :, dy, dx]``. A flipped crop at column offset dx
  is the mirrored copy's crop at offset 8 - dx, so flips need no extra pass. On a 2-core CPU (one thread, batch
  128) this took 1.0 ms a batch, against 1.6 ms for the same gather from one copy followed by a ``torch.where``
  flip, 2.0 ms for ``take`` with a precomputed linear index, and 4.2 ms for a 4-tensor advanced index whose
  column index includes the flip.
* One multiply-add turns the uint8 crops into normalised float32: ``x * (1 / (255 std)) - mean / std``.

Randomness: every epoch's permutation, crop offsets and flips come from a CPU ``torch.Generator`` seeded by
(seed, epoch), drawn for the whole epoch when it starts. So the batches depend only on (seed, epoch, position),
not on the device or on where a run was interrupted, and ``load_state_dict`` resumes mid-epoch exactly. With
data parallelism every rank draws the same global epoch and takes its own slice of each global batch.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ressenet.data.base import DataError, ImageDataset, mix_seed

PAD = 4


def _affine(mean: Sequence[float], std: Sequence[float], channels: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and bias with ``(x / 255 - mean) / std == x * scale + bias``, shaped (1, C, 1, 1)."""
    m = torch.as_tensor(mean, dtype=torch.float64).flatten()
    s = torch.as_tensor(std, dtype=torch.float64).flatten()
    if m.numel() != channels or s.numel() != channels or not bool((s > 0).all()):
        raise DataError(f"normalisation needs {channels} means and {channels} positive stds, got mean={list(mean)} "
                        f"std={list(std)}; use ressenet.data.normalization(...)")
    scale = (1.0 / (255.0 * s)).to(torch.float32).view(1, channels, 1, 1).to(device)
    bias = (-m / s).to(torch.float32).view(1, channels, 1, 1).to(device)
    return scale, bias


def _normalise(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
    torch.mul(x, scale, out=out)  # uint8 * float32 promotes inside the kernel: no float copy of x
    return out.add_(bias)


def _check_shard(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise DataError(f"invalid data-parallel shard rank={rank!r} world_size={world_size!r}; need 0 <= rank < "
                        f"world_size")


class TrainLoader:
    """Endless stream of augmented, normalised training batches on a device.

    Args:
        ds: Training set.
        batch_size: Global batch size (summed over ranks); each rank gets ``batch_size // world_size``.
        mean: Per-channel mean (0..1 scale), e.g. from :func:`ressenet.data.normalization`.
        std: Per-channel std (0..1 scale).
        seed: Seed of the data order and augmentation.
        device: Where the pixels live and batches are made.
        augment: Random crop + flip; False gives the plain images, still reshuffled every epoch.
        rank: This process's data-parallel rank.
        world_size: Number of data-parallel processes.
        channels_last: Return batches in ``torch.channels_last`` memory format.
        share_pixels_with: Another loader over the same dataset and device whose stored pixels this one reuses
            (fused training: one copy of the data for all members).

    Attributes:
        batches_per_epoch: ``len(ds) // batch_size``; the last partial batch is dropped (each epoch drops a
            different random remainder) so every batch has the same shape, as torch.compile and CUDA graphs like.
        epoch: Current epoch, from 0.
        position: Index within ``epoch`` of the batch the next call to :meth:`next` returns.
    """

    def __init__(self, ds: ImageDataset, batch_size: int, *, mean: Sequence[float], std: Sequence[float], seed: int,
                 device: str | torch.device = "cpu", augment: bool = True, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, share_pixels_with: TrainLoader | None = None) -> None:
        _check_shard(rank, world_size)
        if not isinstance(batch_size, int) or batch_size < 1 or batch_size % world_size:
            raise DataError(f"batch_size={batch_size!r} must be a positive multiple of world_size={world_size}")
        if batch_size > len(ds):
            raise DataError(f"batch_size={batch_size} exceeds the {len(ds)} training images of {ds.description}; "
                            f"use a smaller batch")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.seed = int(seed)
        self.augment = augment
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.num_samples = len(ds)
        self.batches_per_epoch = len(ds) // batch_size
        self.epoch = 0
        self.position = 0

        n, c, h, w = ds.images.shape
        self._scale, self._bias = _affine(mean, std, c, self.device)
        self._ready_epoch: int | None = None
        self._plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        other = share_pixels_with
        if other is not None:
            # Fused training: members of one group read the same stored pixels (each its own order and crops).
            if (other.device, other.num_samples, other._windows.shape[1]) != (self.device, n, c):
                raise DataError("share_pixels_with must be a TrainLoader over the same dataset on the same device")
            self._windows, self._labels = other._windows, other._labels
            return
        store = torch.zeros(2, n, c, h + 2 * PAD, w + 2 * PAD, dtype=torch.uint8, device=self.device)
        store[0, :, :, PAD:PAD + h, PAD:PAD + w] = ds.images.to(self.device)
        store[1] = store[0].flip(-1)
        # (2N, C, 2*PAD+1, 2*PAD+1, H, W): window [i, :, dy, dx] is the crop at offset (dy, dx) of stored image i.
        self._windows = store.view(2 * n, c, h + 2 * PAD, w + 2 * PAD).unfold(2, h, 1).unfold(3, w, 1)
        self._labels = ds.labels.to(self.device)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _prepare(self, epoch: int) -> None:
        # Drawn in a fixed order on the CPU for all N samples, whatever the device and the augment flag, so the
        # permutation of a run without augmentation matches the one with it.
        gen = torch.Generator().manual_seed(mix_seed("train-loader", self.seed, epoch))
        n = self.num_samples
        perm = torch.randperm(n, generator=gen)
        dx = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
        flip = torch.randint(0, 2, (n,), generator=gen).bool()
        if not self.augment:
            dx.fill_(PAD)
            dy.fill_(PAD)
            flip.zero_()
        image = perm + n * flip  # index into the (original, mirrored) store
        col = torch.where(flip, 2 * PAD - dx, dx)
        dev = self.device
        self._plan = (image.to(dev), dy.to(dev), col.to(dev), self._labels[perm.to(dev)])
        self._ready_epoch = epoch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns this rank's next (images (B_local, C, H, W) float32, labels (B_local,) int64) and advances."""
        if self._ready_epoch != self.epoch:
            self._prepare(self.epoch)
        image, dy, dx, labels = self._plan  # type: ignore[misc]
        start = self.position * self.batch_size + self.rank * self.local_batch_size
        sl = slice(start, start + self.local_batch_size)
        x = self._windows[image[sl], :, dy[sl], dx[sl]]  # (B_local, C, H, W) uint8
        y = labels[sl]
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        return _normalise(x, self._scale, self._bias, self.channels_last), y

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: plain ints, safe for JSON and ``torch.load(weights_only=True)``."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "batch_size": self.batch_size,
                "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state_dict`: the next batches equal those the saved loader would have given.

        The saved seed is adopted. The world size may differ from the saved run's (batches are defined globally).

        Raises:
            DataError: If the state belongs to a different dataset size or global batch size, or is malformed.
        """
        try:
            seed, epoch, position = int(state["seed"]), int(state["epoch"]), int(state["position"])
            batch_size, num_samples = int(state["batch_size"]), int(state["num_samples"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"malformed TrainLoader state {state!r} ({e}); it must come from "
                            f"TrainLoader.state_dict()") from e
        if (batch_size, num_samples) != (self.batch_size, self.num_samples):
            raise DataError(f"TrainLoader state is for batch_size={batch_size} over {num_samples} images, this loader "
                            f"has batch_size={self.batch_size} over {self.num_samples}; resume with the same data "
                            f"and batch size")
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise DataError(f"TrainLoader state epoch={epoch} position={position} is out of range "
                            f"(batches_per_epoch={self.batches_per_epoch})")
        self.seed, self.epoch, self.position = seed, epoch, position
        self._ready_epoch = None


def eval_batches(ds: ImageDataset, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
                 device: str | torch.device = "cpu", channels_last: bool = False, rank: int = 0,
                 world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields normalised, unaugmented (images, labels) batches in dataset order, the last one possibly smaller.

    With ``world_size > 1`` rank r covers the contiguous slice ``[N r / W, N (r + 1) / W)``, so the ranks together
    see every sample exactly once (their counts differ by at most one).

    Args:
        ds: Dataset to evaluate on.
        batch_size: Images per batch (per rank).
        mean: Per-channel mean (0..1 scale).
        std: Per-channel std (0..1 scale).
        device: Device of the yielded tensors.
        channels_last: Yield images in ``torch.channels_last`` memory format.
        rank: This process's data-parallel rank.
        world_size: Number of data-parallel processes.
    """
    # Arguments are checked here, not inside the generator, so mistakes surface at the call.
    _check_shard(rank, world_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r} must be a positive integer")
    dev = torch.device(device)
    n = len(ds)
    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    scale, bias = _affine(mean, std, ds.images.shape[1], dev)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # One transfer for the whole shard, not one per batch.
        images = ds.images[lo:hi].to(dev)
        labels = ds.labels[lo:hi].to(dev)
        for start in range(0, hi - lo, batch_size):
            yield (_normalise(images[start:start + batch_size], scale, bias, channels_last),
                   labels[start:start + batch_size])

    return batches()
