"""train_val_split: stratified, disjoint, complete, seeded."""
from __future__ import annotations

import pytest
import torch

from ressenet.data import DataError, ImageDataset, train_val_split


def dataset(counts: list[int]) -> ImageDataset:
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    n = len(labels)
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images.view(n, -1)[:, :2] = torch.stack([torch.arange(n) // 256, torch.arange(n) % 256], 1).to(torch.uint8)
    return ImageDataset(images=images, labels=labels, classes=[f"c{k}" for k in range(len(counts))], source="memory")


def ids(ds: ImageDataset) -> list[int]:
    flat = ds.images.view(len(ds), -1)[:, :2].long()
    return (flat[:, 0] * 256 + flat[:, 1]).tolist()


def test_stratified_disjoint_complete_and_in_order():
    ds = dataset([500, 300, 200])
    train, val = train_val_split(ds, val_size=100, seed=0)
    assert val.class_counts() == [50, 30, 20] and train.class_counts() == [450, 270, 180]
    a, b = ids(train), ids(val)
    assert not set(a) & set(b) and sorted(a + b) == list(range(1000))
    assert a == sorted(a) and b == sorted(b)  # original order kept
    assert torch.equal(val.labels, ds.labels[torch.tensor(b)])
    assert "validation part" in val.description and val.source == ds.source


def test_rounding_still_gives_exact_size():
    ds = dataset([7, 7, 7])
    _, val = train_val_split(ds, val_size=5, seed=0)
    assert len(val) == 5 and sorted(val.class_counts()) == [1, 2, 2]


def test_seeded_and_deterministic():
    ds = dataset([100, 100])
    a = ids(train_val_split(ds, 20, seed=1)[1])
    assert a == ids(train_val_split(ds, 20, seed=1)[1])
    assert a != ids(train_val_split(ds, 20, seed=2)[1])


def test_zero_and_invalid_sizes():
    ds = dataset([10, 10])
    train, val = train_val_split(ds, 0)
    assert train is ds and val is None
    for bad in (-1, 20, 25, 2.5, "5", True):
        with pytest.raises(DataError, match="val_size"):
            train_val_split(ds, bad)
