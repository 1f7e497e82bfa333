"""A deterministic, learnable stand-in dataset for smoke tests and benchmarks (only when asked for by name)."""
from __future__ import annotations

import math

import torch

from ressenet.data.base import DataError, ImageDataset, mix_seed

_CHUNK = 4096  # fixed, so the generator's draws (and hence the images) do not depend on memory settings


def load_synthetic_split(split: str, *, num_classes: int = 10, train_size: int = 50000, test_size: int = 10000,
                         seed: int = 0, image_size: int = 32) -> ImageDataset:
    """Generates one split of a class-dependent image set.

    Each class has its own colour and a sinusoidal grating of its own orientation and frequency (shared by both
    splits); each image adds per-pixel noise. A small network separates the classes within a few hundred steps, so
    a smoke test can watch the loss fall, while the noise keeps it from being trivial at step 0.

    Args:
        split: ``"train"`` or ``"test"``.
        num_classes: Number of classes (>= 2).
        train_size: Images in the train split.
        test_size: Images in the test split.
        seed: Seed; the same arguments always give the same pixels.
        image_size: Side of the square images.

    Returns:
        The split, labels balanced (sizes permitting) and shuffled.
    """
    n = train_size if split == "train" else test_size
    for what, v, lo in (("num_classes", num_classes, 2), ("train_size", train_size, 1), ("test_size", test_size, 1),
                        ("image_size", image_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise DataError(f"synthetic dataset option {what}={v!r} is invalid; use an integer >= {lo}")

    proto_gen = torch.Generator().manual_seed(mix_seed("synthetic-prototypes", seed, num_classes, image_size))
    colours = torch.rand(num_classes, 3, 1, 1, generator=proto_gen) * 150 + 50  # (K, 3, 1, 1) in 50..200
    angles = torch.rand(num_classes, generator=proto_gen) * math.pi
    freqs = torch.rand(num_classes, generator=proto_gen) * 0.5 + 0.15  # radians per pixel
    phases = torch.rand(num_classes, 3, generator=proto_gen) * 2 * math.pi
    coords = torch.arange(image_size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = xx[None] * torch.cos(angles)[:, None, None] + yy[None] * torch.sin(angles)[:, None, None]  # (K, H, W)
    grating = torch.sin(freqs[:, None, None, None] * proj[:, None] + phases[:, :, None, None])  # (K, 3, H, W)
    prototypes = colours + 35 * grating

    gen = torch.Generator().manual_seed(mix_seed("synthetic", split, seed, num_classes, image_size))
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gen)]
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        lab = labels[start:start + _CHUNK]
        noise = torch.randn(len(lab), 3, image_size, image_size, generator=gen) * 30
        images[start:start + _CHUNK] = (prototypes[lab] + noise).round_().clamp_(0, 255).to(torch.uint8)
    return ImageDataset(
        lossless=True,
        images=images,
        labels=labels,
        classes=[f"class_{i}" for i in range(num_classes)],
        source="synthetic",
        description=f"synthetic {split} ({num_classes} classes, {n} images, seed {seed})",
        path=None,
    )
