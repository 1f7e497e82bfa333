"""The shared CIFAR-10 JPEG copy loads as the data README describes (slow: decodes 60,000 JPEGs once)."""
from __future__ import annotations

import numpy as np
import pytest

from ressenet.data import channel_stats
from ressenet.data.constants import CIFAR10_CLASSES

pytestmark = pytest.mark.slow

# shared/data/README.md, "Per-channel statistics of the decoded pixels (/255)".
EXPECTED = {
    "train": ([0.49125038, 0.48209027, 0.44652094], [0.24523161, 0.24278155, 0.26062877], 5000),
    "test": ([0.49406573, 0.48506360, 0.45038201], [0.24484534, 0.24219813, 0.26058167], 1000),
}


@pytest.mark.parametrize("split", ["train", "test"])
def test_jpeg_copy_counts_classes_and_statistics(cifar10_jpeg, split):
    ds = cifar10_jpeg[split]
    mean, std, per_class = EXPECTED[split]
    assert ds.classes == list(CIFAR10_CLASSES)
    assert ds.class_counts() == [per_class] * 10 and ds.images.shape == (10 * per_class, 3, 32, 32)
    assert ds.source == "imagefolder" and "JPEG" in ds.description
    got_mean, got_std = channel_stats(ds.images)
    np.testing.assert_allclose(got_mean, mean, atol=1e-4)
    np.testing.assert_allclose(got_std, std, atol=1e-4)


def test_jpeg_copy_matches_lossless_subset_labels(cifar10_jpeg, shared_data_dir):
    """Files within a class follow the official order, so the first training images per class match the exact
    subset's images of that class, up to JPEG damage (README: 7.9 grey levels RMS)."""
    from ressenet.data import read_binary_batch

    exact, labels, _ = read_binary_batch(shared_data_dir / "cifar-10-lossless-subset" / "data_batch_1_first4000.bin")
    ds = cifar10_jpeg["train"]
    for k in (0, 6, 9):
        ours = ds.images[ds.labels == k][:20].numpy().astype(np.float64)
        ref = exact[labels == k][:20].astype(np.float64)
        rms = np.sqrt(((ours - ref) ** 2).mean())
        assert rms < 15, f"class {k}: RMS {rms:.1f} grey levels"
