"""TrainLoader / eval_batches: augmentation correctness and statistics, determinism, resume, sharding."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cifar_fakes import index_images
from scipy import stats

from ressenet.data import DataError, ImageDataset, TrainLoader, eval_batches, load_split

# With mean 0 and std 1/255, normalisation is the identity on pixel values, so batches can be read back exactly.
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}
SOURCE = index_images(251)


def index_dataset(n: int = 200) -> ImageDataset:
    return ImageDataset(images=torch.from_numpy(index_images(n)), labels=torch.arange(n) % 10,
                        classes=[str(i) for i in range(10)])


def decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Recovers (image index, dy, dx, flip) of each crop of index images, and checks the crop pixel by pixel."""
    v = x.round().to(torch.int64).numpy()
    idx, dys, dxs, flips = [], [], [], []
    for crop in v:
        rows, cols = crop[1], crop[2]
        valid_r = np.flatnonzero(rows.max(1))  # output rows taken from the image, not from the padding
        valid_c = np.flatnonzero(cols.max(0))
        r, c = valid_r[0], valid_c[0]
        dy = rows[r, c] - 1 - r + 4  # value - 1 is the source row; padded row = source row + 4 = dy + r
        flip = len(valid_c) > 1 and cols[r, valid_c[1]] < cols[r, valid_c[0]]
        # Unflipped: padded col = dx + j. Flipped: output col j shows padded col dx + 31 - j.
        dx = (cols[r, c] - 1 + 4 - (31 - c)) if flip else (cols[r, c] - 1 + 4 - c)
        i = crop[0][r, c] - 1
        ref = np.pad(SOURCE[i], ((0, 0), (4, 4), (4, 4)))[:, dy:dy + 32, dx:dx + 32]
        if flip:
            ref = ref[:, :, ::-1]
        assert np.array_equal(crop, ref), "crop is not a zero-padded shifted (and flipped) copy of its image"
        idx.append(i), dys.append(dy), dxs.append(dx), flips.append(flip)
    return np.array(idx), np.array(dys), np.array(dxs), np.array(flips)


def test_batches_are_shifted_flipped_zero_padded_crops_with_their_labels():
    ds = index_dataset(200)
    loader = TrainLoader(ds, 50, seed=1, **RAW)
    assert loader.batches_per_epoch == 4 and len(loader) == 4
    seen_dy, seen_dx, seen_flip = [], [], []
    for _ in range(60):  # 15 epochs, 3000 crops
        epoch = loader.epoch
        x, y = loader.next()
        assert x.shape == (50, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        idx, dy, dx, flip = decode(x)
        assert np.array_equal(y.numpy(), idx % 10), "labels must stay with their images"
        assert 0 < flip.sum() < 50, "flips are drawn per sample"
        seen_dy += dy.tolist()
        seen_dx += dx.tolist()
        seen_flip += flip.tolist()
        assert epoch == loader.epoch or loader.position == 0
    dy, dx = np.array(seen_dy), np.array(seen_dx)
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
    counts = np.bincount(dy * 9 + dx, minlength=81)
    assert stats.chisquare(counts).pvalue > 1e-3, "crop offsets should be uniform over the 9x9 range"
    assert abs(np.mean(seen_flip) - 0.5) < 0.05


def test_each_epoch_is_a_permutation_dropping_a_random_remainder():
    ds = index_dataset(110)
    loader = TrainLoader(ds, 25, seed=0, **RAW)
    dropped = []
    for _ in range(3):
        assert loader.position == 0
        idx = np.concatenate([decode(loader.next()[0])[0] for _ in range(loader.batches_per_epoch)])
        assert len(idx) == 100 and len(set(idx.tolist())) == 100
        dropped.append(frozenset(range(110)) - set(idx.tolist()))
    assert len(set(dropped)) == 3


def test_augment_false_gives_plain_images_normalised():
    ds = load_split("synthetic", "train", train_size=64)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    loader = TrainLoader(ds, 32, mean=mean, std=std, seed=0, augment=False)
    x, y = loader.next()
    first = TrainLoader(ds, 32, mean=mean, std=std, seed=0)
    _, y_aug = first.next()
    assert torch.equal(y, y_aug)  # same permutation with or without augmentation
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    # Find each sample's source by its label-independent pixels.
    flat = ds.images.flatten(1).float()
    ref_idx = torch.cdist(((x * s + m) * 255).flatten(1), flat).argmin(1)
    ref = (ds.images[ref_idx].float() / 255 - m) / s
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(y, ds.labels[ref_idx])


def test_same_seed_same_batches_other_seed_others():
    ds = index_dataset(100)
    a, b, c = (TrainLoader(ds, 20, seed=s, **RAW) for s in (5, 5, 6))
    for _ in range(12):
        xa, ya = a.next()
        xb, yb = b.next()
        xc, _ = c.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)


@pytest.mark.parametrize("stop", [0, 3, 5, 7, 13])
def test_resume_from_state_dict_reproduces_continuation(stop):
    ds = index_dataset(100)
    kwargs = dict(seed=11, channels_last=False, **RAW)
    ref = TrainLoader(ds, 20, **kwargs)
    for _ in range(stop):
        ref.next()
    state = json.loads(json.dumps(ref.state_dict()))
    assert all(isinstance(v, int) for v in state.values())
    assert (state["epoch"], state["position"]) == divmod(stop, 5)
    resumed = TrainLoader(ds, 20, **{**kwargs, "seed": 999})  # the saved seed wins
    resumed.next()  # its own progress is discarded too
    resumed.load_state_dict(state)
    for _ in range(8):
        xr, yr = ref.next()
        xs, ys = resumed.next()
        assert torch.equal(xr, xs) and torch.equal(yr, ys)
    assert resumed.state_dict() == ref.state_dict()


def test_load_state_dict_rejects_other_data():
    ds = index_dataset(100)
    state = TrainLoader(ds, 20, seed=0, **RAW).state_dict()
    with pytest.raises(DataError, match="batch_size"):
        TrainLoader(ds, 10, seed=0, **RAW).load_state_dict(state)
    with pytest.raises(DataError, match="malformed"):
        TrainLoader(ds, 20, seed=0, **RAW).load_state_dict({"epoch": 1})


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_union_equals_single_process_batch(world_size):
    ds = index_dataset(100)
    single = TrainLoader(ds, 24, seed=3, **RAW)
    ranks = [TrainLoader(ds, 24, seed=3, rank=r, world_size=world_size, **RAW) for r in range(world_size)]
    for _ in range(9):  # crosses two epoch boundaries
        x, y = single.next()
        parts = [r.next() for r in ranks]
        assert all(p[0].shape[0] == 24 // world_size for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_invalid_loader_arguments():
    ds = index_dataset(50)
    with pytest.raises(DataError, match="multiple of world_size"):
        TrainLoader(ds, 25, seed=0, world_size=2, **RAW)
    with pytest.raises(DataError, match="rank"):
        TrainLoader(ds, 10, seed=0, rank=2, world_size=2, **RAW)
    with pytest.raises(DataError, match="exceeds"):
        TrainLoader(ds, 64, seed=0, **RAW)
    with pytest.raises(DataError, match="positive stds"):
        TrainLoader(ds, 10, seed=0, mean=(0, 0, 0), std=(1, 0, 1))
    with pytest.raises(DataError, match="rank"):  # raised at the call, not at the first batch
        eval_batches(ds, 10, rank=1, world_size=1, **RAW)


def test_channels_last_same_values():
    ds = index_dataset(64)
    a = TrainLoader(ds, 32, seed=0, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    b = TrainLoader(ds, 32, seed=0, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), channels_last=True)
    xa, _ = a.next()
    xb, _ = b.next()
    assert xb.is_contiguous(memory_format=torch.channels_last) and xa.is_contiguous()
    assert torch.equal(xa, xb)


@pytest.mark.parametrize("world_size", [1, 3])
def test_eval_batches_in_order_complete_and_sharded(world_size):
    ds = load_split("synthetic", "test", test_size=103)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    xs, ys, sizes = [], [], []
    for rank in range(world_size):
        for x, y in eval_batches(ds, 16, mean=mean, std=std, rank=rank, world_size=world_size,
                                 channels_last=rank == 0):
            assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last) == (rank == 0)
            xs.append(x), ys.append(y), sizes.append(len(y))
    ref = (ds.images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat(xs), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.cat(ys), ds.labels)
    if world_size == 1:
        assert sizes == [16] * 6 + [7]
