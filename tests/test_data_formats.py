"""Official CIFAR formats (python pickles, binary records) for both datasets, and their failure modes."""
from __future__ import annotations

import json
import pickle
import tarfile

import numpy as np
import pytest
import torch
from cifar_fakes import malicious_pickle, py2_pickle, write_cifar

from ressenet.data import (
    DATASETS,
    DataError,
    ImageDataset,
    channel_stats,
    dataset_info,
    format_info,
    load_datasets,
    load_pickle,
    load_split,
    normalization,
    read_binary_batch,
)
from ressenet.data.constants import CIFAR100_COARSE_CLASSES, PAPER_MEAN, PAPER_STD

FORMATS = [("cifar10", "python"), ("cifar10", "binary"), ("cifar100", "python"), ("cifar100", "binary")]


def _assert_matches(ds: ImageDataset, images: np.ndarray, labels: np.ndarray) -> None:
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(images), 3, 32, 32)
    assert ds.images.is_contiguous() and ds.images.device.type == "cpu"
    assert ds.labels.dtype == torch.int64
    assert np.array_equal(ds.images.numpy(), images)
    assert np.array_equal(ds.labels.numpy(), labels)


@pytest.mark.parametrize("name,variant", FORMATS)
def test_official_formats_load_exactly(tmp_path, name, variant):
    fake = write_cifar(tmp_path, name, variant, train_size=40, test_size=15)
    splits = load_datasets(name, tmp_path)
    _assert_matches(splits["train"], fake.train_images, fake.train_labels)
    _assert_matches(splits["test"], fake.test_images, fake.test_labels)
    for ds in splits.values():
        assert ds.source == f"{name}-{variant}"
        assert ds.classes == fake.classes
        assert ds.path == str(fake.folder)
        assert str(fake.folder) in ds.description and variant in ds.description
    if name == "cifar100":
        assert splits["train"].coarse_classes == list(CIFAR100_COARSE_CLASSES)
        assert np.array_equal(splits["train"].coarse_labels.numpy(), fake.train_coarse)
        assert np.array_equal(splits["test"].coarse_labels.numpy(), fake.test_coarse)
    else:
        assert splits["train"].coarse_labels is None and splits["train"].coarse_classes is None


@pytest.mark.parametrize("name,variant", FORMATS)
def test_root_may_be_the_official_folder_itself(tmp_path, name, variant):
    fake = write_cifar(tmp_path, name, variant, train_size=10, test_size=5)
    ds = load_split(name, "test", fake.folder)
    _assert_matches(ds, fake.test_images, fake.test_labels)


def test_python_preferred_over_binary(tmp_path):
    write_cifar(tmp_path, "cifar10", "binary", seed=1)
    fake = write_cifar(tmp_path, "cifar10", "python", seed=2)
    ds = load_split("cifar10", "train", tmp_path)
    assert ds.source == "cifar10-python"
    _assert_matches(ds, fake.train_images, fake.train_labels)


def test_numpy2_module_spelling_accepted(tmp_path):
    fake = write_cifar(tmp_path, "cifar10", "python", numpy_module="numpy._core.multiarray")
    _assert_matches(load_split("cifar10", "test", tmp_path), fake.test_images, fake.test_labels)


def test_archive_root_is_unpacked_into_cache(tmp_path):
    src = tmp_path / "src"
    fake = write_cifar(src, "cifar100", "python")
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(fake.folder, arcname="cifar-100-python")
    cache = tmp_path / "cache"
    ds = load_split("cifar100", "train", archive, cache_dir=cache)
    _assert_matches(ds, fake.train_images, fake.train_labels)
    assert any((cache / "extracted").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "cifar-100-python.tar.gz", "src"]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_nothing_found_says_where_and_how(tmp_path, name):
    with pytest.raises(DataError) as e:
        load_split(name, "train", tmp_path / "empty")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "empty") in msg and "--download" in msg and "--data-root" in msg
    assert ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python") in msg


def test_incomplete_folder_names_missing_member(tmp_path):
    fake = write_cifar(tmp_path, "cifar10", "python")
    (fake.folder / "data_batch_3").unlink()
    assert load_split("cifar10", "test", tmp_path).labels.numel() == 20  # the test split does not need it
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_split("cifar10", "train", tmp_path)


def test_malicious_pickle_refused_and_not_run(tmp_path):
    fake = write_cifar(tmp_path, "cifar10", "python")
    marker = tmp_path / "pwned"
    (fake.folder / "test_batch").write_bytes(malicious_pickle(marker))
    # Sanity: the payload does run under plain pickle, so the refusal below is meaningful.
    pickle.loads(malicious_pickle(tmp_path / "control"))
    assert (tmp_path / "control").exists()
    with pytest.raises(DataError) as e:
        load_split("cifar10", "test", tmp_path)
    assert "test_batch" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [{"data": __import__("collections").OrderedDict()}, {"x": print}])
def test_restricted_unpickler_refuses_other_globals(tmp_path, obj):
    path = tmp_path / "f"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_pickle(path)


def test_truncated_pickle(tmp_path):
    fake = write_cifar(tmp_path, "cifar100", "python")
    data = (fake.folder / "test").read_bytes()
    (fake.folder / "test").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or malformed") as e:
        load_split("cifar100", "test", tmp_path)
    assert str(fake.folder / "test") in str(e.value)


def test_pickle_without_expected_keys(tmp_path):
    fake = write_cifar(tmp_path, "cifar10", "python")
    (fake.folder / "test_batch").write_bytes(py2_pickle({"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DataError, match="'labels'"):
        load_split("cifar10", "test", tmp_path)


@pytest.mark.parametrize("name,member", [("cifar10", "test_batch.bin"), ("cifar100", "test.bin")])
def test_truncated_binary(tmp_path, name, member):
    fake = write_cifar(tmp_path, name, "binary")
    path = fake.folder / member
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or malformed") as e:
        load_split(name, "test", tmp_path)
    assert str(path) in str(e.value)


def test_binary_label_out_of_range(tmp_path):
    fake = write_cifar(tmp_path, "cifar10", "binary")
    raw = bytearray((fake.folder / "test_batch.bin").read_bytes())
    raw[0] = 10
    (fake.folder / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="labels range"):
        load_split("cifar10", "test", tmp_path)


def test_wrong_number_of_class_names(tmp_path):
    fake = write_cifar(tmp_path, "cifar10", "binary")
    (fake.folder / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="2 class names"):
        load_split("cifar10", "test", tmp_path)


def test_lossless_subset_through_binary_reader(shared_data_dir):
    images, labels, coarse = read_binary_batch(shared_data_dir / "cifar-10-lossless-subset" /
                                               "data_batch_1_first4000.bin")
    assert images.shape == (4000, 3, 32, 32) and coarse is None
    assert labels[:20].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3, 4, 7, 7, 2, 9, 9, 9, 3, 2, 6]
    assert np.bincount(labels).tolist() == [396, 366, 420, 384, 422, 393, 414, 385, 407, 413]
    mean, std = channel_stats(torch.from_numpy(images))
    np.testing.assert_allclose(mean, [0.49159668, 0.48175928, 0.4446567], atol=1e-7)
    np.testing.assert_allclose(std, [0.24711378, 0.24397223, 0.26250026], atol=1e-7)


def test_unknown_name_split_and_options(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_split("mnist", "train", tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        load_split("cifar10", "val", tmp_path)
    with pytest.raises(DataError, match="only to the synthetic"):
        load_split("cifar10", "train", tmp_path, num_classes=3)
    with pytest.raises(DataError, match="unknown synthetic"):
        load_split("synthetic", "train", colour=1)
    assert DATASETS == ("cifar10", "cifar100", "imagefolder", "synthetic")


def test_synthetic_is_deterministic_and_class_dependent():
    a = load_split("synthetic", "train", num_classes=4, train_size=400, seed=3)
    b = load_split("synthetic", "train", num_classes=4, train_size=400, seed=3)
    c = load_split("synthetic", "train", num_classes=4, train_size=400, seed=4)
    test = load_split("synthetic", "test", num_classes=4, test_size=100, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.class_counts() == [100] * 4 and len(test) == 100 and a.source == "synthetic" and a.path is None
    # Nearest class-mean classifier fitted on train separates test: the classes are learnable.
    x, xt = a.images.float().flatten(1), test.images.float().flatten(1)
    centroids = torch.stack([x[a.labels == k].mean(0) for k in range(4)])
    pred = torch.cdist(xt, centroids).argmin(1)
    assert (pred == test.labels).float().mean() > 0.9


def test_image_dataset_helpers_and_validation():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 32, 32).contiguous()
    ds = ImageDataset(images=images, labels=torch.tensor([0, 1, 1, 2, 2, 2]), classes=["a", "b", "c"])
    assert len(ds) == 6 and ds.class_counts() == [1, 2, 3]
    sub = ds.subset([5, 0])
    assert sub.labels.tolist() == [2, 0] and sub.images[:, 0, 0, 0].tolist() == [5, 0] and sub.classes == ds.classes
    with pytest.raises(DataError):
        ImageDataset(images=images.float(), labels=torch.zeros(6), classes=["a"])
    with pytest.raises(DataError):
        ImageDataset(images=images, labels=torch.tensor([0, 1, 1, 2, 2, 3]), classes=["a", "b", "c"])
    with pytest.raises(DataError):
        ImageDataset(images=images, labels=torch.tensor([0, 1]), classes=["a", "b", "c"])


def test_normalization_modes():
    for name in DATASETS:
        assert normalization(name) == (PAPER_MEAN, PAPER_STD)
    mean, std = normalization("cifar10", "dataset")
    assert mean[0] == pytest.approx(0.49139968) and std[0] == pytest.approx(0.24703223)
    assert normalization("cifar100", "dataset")[0][0] == pytest.approx(0.5070752)
    with pytest.raises(DataError, match="train="):
        normalization("imagefolder", "dataset")
    ds = load_split("synthetic", "train", train_size=200)
    assert normalization("synthetic", "dataset", train=ds) == channel_stats(ds.images)
    with pytest.raises(DataError, match="mode"):
        normalization("cifar10", "imagenet")


def test_channel_stats_matches_float_computation():
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = images.double() / 255
    np.testing.assert_allclose(mean, x.mean((0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(std, x.std((0, 2, 3), unbiased=False).numpy(), rtol=1e-12)


def test_dataset_info_is_json_and_formats(tmp_path):
    fake = write_cifar(tmp_path, "cifar100", "binary", train_size=30, test_size=10)
    info = dataset_info("cifar100", tmp_path)
    assert json.loads(json.dumps(info)) == info
    train = info["splits"]["train"]
    assert train["format"] == "cifar100-binary" and train["count"] == 30 and train["num_classes"] == 100
    assert train["class_counts"] == np.bincount(fake.train_labels, minlength=100).tolist()
    assert train["num_coarse_classes"] == 20 and len(train["mean"]) == 3 and len(train["std"]) == 3
    text = format_info(info)
    assert "cifar100-binary" in text and "apple" in text and "vehicles_2" in text and str(tmp_path) in text


def test_every_dataset_row_names_a_reader_and_downloads_have_archives():
    from ressenet.cli import build_parser
    from ressenet.data.constants import ARCHIVES, DATASET_INFO, DOWNLOADABLE
    from ressenet.data.datasets import READERS

    assert all(d.reader in READERS for d in DATASET_INFO.values())
    assert DOWNLOADABLE == ("cifar10", "cifar100")
    assert all((name, "python") in ARCHIVES for name in DOWNLOADABLE)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "download", "--dataset", "imagefolder"])
