"""Image folders (plain, .tar.gz, .zip), their decoded-pixel cache, and their error messages."""
from __future__ import annotations

import os
import tarfile
import zipfile

import numpy as np
import pytest
from cifar_fakes import write_image_folder
from PIL import Image

from ressenet.data import DataError, imagefolder, load_datasets, load_split
from ressenet.data.archive import extract


def _check(splits, expected, classes=("cat", "dog", "frog")):
    for split, (images, labels) in expected.items():
        ds = splits[split]
        assert ds.classes == sorted(classes) and ds.source == "imagefolder"
        assert np.array_equal(ds.images.numpy(), images) and np.array_equal(ds.labels.numpy(), labels)


def test_folder_loads_in_class_and_numeric_order(tmp_path):
    # 12 files per class: "10.png" must come after "9.png" (numeric order, not "1, 10, 11, 12, 2").
    expected = write_image_folder(tmp_path / "f", train_per_class=12, test_per_class=2)
    splits = load_datasets("imagefolder", tmp_path / "f", cache_dir=tmp_path / "cache")
    _check(splits, expected)
    assert "3 classes, PNG" in splits["train"].description and splits["test"].path == str(tmp_path / "f")


def test_folder_one_level_down(tmp_path):
    expected = write_image_folder(tmp_path / "outer" / "mydata")
    _check(load_datasets("imagefolder", tmp_path / "outer", cache_dir=tmp_path / "cache"), expected)


@pytest.mark.parametrize("kind", ["tar.gz", "tgz", "tar", "zip"])
def test_archives_are_read_without_writing_beside_them(tmp_path, kind):
    src = tmp_path / "src"
    expected = write_image_folder(src / "set")
    shared = tmp_path / "shared"
    shared.mkdir()
    archive = shared / f"set.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted((src / "set").rglob("*.png")):
                zf.write(path, path.relative_to(src).as_posix())
    else:
        with tarfile.open(archive, "w:gz" if "gz" in kind else "w") as tf:
            tf.add(src / "set", arcname="set")
    os.chmod(shared, 0o555)  # read-only, as shared/ is in CI
    try:
        _check(load_datasets("imagefolder", archive, cache_dir=tmp_path / "cache"), expected)
        assert [p.name for p in shared.iterdir()] == [archive.name]
    finally:
        os.chmod(shared, 0o755)


def test_second_load_comes_from_cache_and_changes_invalidate_it(tmp_path, monkeypatch):
    root, cache = tmp_path / "f", tmp_path / "cache"
    expected = write_image_folder(root)
    load_datasets("imagefolder", root, cache_dir=cache)
    assert len(list((cache / "imagefolder").glob("*.npz"))) == 2
    assert not list((cache / "imagefolder").glob(".*"))  # no temporary files left

    def no_decode(items):
        raise AssertionError("decoded again despite a valid cache")

    with monkeypatch.context() as m:
        m.setattr(imagefolder, "_decode", no_decode)
        _check(load_datasets("imagefolder", root, cache_dir=cache), expected)

    # Rewriting one image (new size/mtime) must be noticed.
    new = np.zeros((32, 32, 3), np.uint8)
    target = root / "train" / "dog" / "2.png"
    Image.fromarray(new).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds = load_split("imagefolder", "train", root, cache_dir=cache)
    assert ds.images[5].sum() == 0  # dog is class 1; its 2nd image is index 4 + 1


def test_damaged_cache_is_rebuilt(tmp_path):
    root, cache = tmp_path / "f", tmp_path / "cache"
    expected = write_image_folder(root)
    load_datasets("imagefolder", root, cache_dir=cache)
    for f in (cache / "imagefolder").glob("*.npz"):
        f.write_bytes(b"garbage")
    _check(load_datasets("imagefolder", root, cache_dir=cache), expected)


def test_other_modes_are_converted_to_rgb(tmp_path):
    write_image_folder(tmp_path / "f", mode="L", ext=".jpg")
    ds = load_split("imagefolder", "train", tmp_path / "f", cache_dir=tmp_path / "cache")
    assert ds.images.shape == (12, 3, 32, 32)
    assert (ds.images[:, 0] == ds.images[:, 1]).all() and (ds.images[:, 1] == ds.images[:, 2]).all()
    assert "JPEG" in ds.description


def test_wrong_size_names_the_file(tmp_path):
    write_image_folder(tmp_path / "f")
    bad = tmp_path / "f" / "train" / "dog" / "3.png"
    Image.new("RGB", (64, 48)).save(bad)
    with pytest.raises(DataError) as e:
        load_split("imagefolder", "train", tmp_path / "f", cache_dir=tmp_path / "cache")
    assert str(bad) in str(e.value) and "64x48" in str(e.value) and "32x32" in str(e.value)


def test_unreadable_image_names_the_file(tmp_path):
    write_image_folder(tmp_path / "f")
    bad = tmp_path / "f" / "test" / "cat" / "1.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode") as e:
        load_split("imagefolder", "test", tmp_path / "f", cache_dir=tmp_path / "cache")
    assert str(bad) in str(e.value)


def test_test_classes_must_equal_train_classes(tmp_path):
    write_image_folder(tmp_path / "f")
    (tmp_path / "f" / "test" / "frog").rename(tmp_path / "f" / "test" / "toad")
    with pytest.raises(DataError, match="differ") as e:
        load_split("imagefolder", "test", tmp_path / "f", cache_dir=tmp_path / "cache")
    assert "toad" in str(e.value) and "frog" in str(e.value)


def test_missing_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split("imagefolder", "train", tmp_path / "nope", cache_dir=tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train/ folder"):
        load_split("imagefolder", "train", tmp_path / "empty", cache_dir=tmp_path / "cache")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="neither a folder"):
        load_split("imagefolder", "train", tmp_path / "x.txt", cache_dir=tmp_path / "cache")
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_split("imagefolder", "train", tmp_path / "bad.tar.gz", cache_dir=tmp_path / "cache")


def test_an_image_folder_read_as_cifar_says_to_pass_dataset_imagefolder(tmp_path):
    write_image_folder(tmp_path / "src" / "set")
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "src" / "set", arcname="set")
    for root in (tmp_path / "src", archive):
        with pytest.raises(DataError, match=r"image folder .*not CIFAR-10's official files; read it with --dataset "
                                            r"imagefolder") as e:
            load_datasets("cifar10", root, cache_dir=tmp_path / "cache")
        assert str(root) in str(e.value)
    # An archive of an image folder too large to unpack as an official CIFAR archive says what it is.
    with pytest.raises(DataError, match=r"set.tar.gz is an image-folder archive .*read it with --dataset imagefolder"):
        extract(archive, tmp_path / "cache", max_members=20)
