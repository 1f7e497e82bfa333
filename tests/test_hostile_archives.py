"""Damaged and odd archives and images (reliability issue, remaining items): truncated tars and .tar.gz files,
duplicate members, 16-bit PNGs, encrypted and Windows-made zips, class names with control characters.

Every fixture is a real small archive or folder built here; each problem must end in one line (a
:class:`DataError`, which the CLI prints as is) naming the file and the fix, never in a silently smaller dataset.
"""
from __future__ import annotations

import gzip
import io
import random
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ressenet.cli import main
from ressenet.data import DataError, archive, load_datasets, load_split

# (member path, pixel value): train/a and train/b with two images each, test/a with one, test/b with two, in this
# order, so a cut before the last member leaves a smaller test split and a cut before the one before it leaves
# test/ without class b.
MEMBERS = [("set/train/a/1.png", 10), ("set/train/a/2.png", 20), ("set/train/b/1.png", 30), ("set/train/b/2.png", 40),
           ("set/test/a/1.png", 50), ("set/test/b/1.png", 60), ("set/test/b/2.png", 70)]


def one_line(exc_info: pytest.ExceptionInfo) -> str:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, DataError) and "\n" not in msg and "Traceback" not in msg
    return msg


def png(value: int, seed: int = 0) -> bytes:
    """A 32x32 RGB PNG of noise around ``value`` (incompressible enough that the archive's end is the tar's)."""
    px = np.random.default_rng(seed * 1000 + value).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    px[0, 0] = value
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_tar() -> bytes:
    return tar_bytes([(name, png(v)) for name, v in MEMBERS])


def header_offsets(data: bytes) -> list[int]:
    """Where each member's header starts, and where the end-of-archive marker starts (last)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        infos = tf.getmembers()
    return [i.offset for i in infos] + [infos[-1].offset_data + -(-infos[-1].size // 512) * 512]


def load(path: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_datasets("imagefolder", path, cache_dir=tmp_path / "cache")


# ---- item 1: truncated archives --------------------------------------------------------------------------------


def test_the_uncut_archives_load(tmp_path):
    data = image_tar()
    for name, blob in (("set.tar", data), ("set.tar.gz", gzip.compress(data))):
        (tmp_path / name).write_bytes(blob)
        splits = load(tmp_path / name, tmp_path)
        assert len(splits["train"]) == 4 and len(splits["test"]) == 3


@pytest.mark.parametrize("where", ["before the last member", "before test/b", "at the end-of-archive marker",
                                   "inside the end-of-archive marker", "inside a header"])
def test_a_tar_cut_at_a_member_boundary_is_truncated(tmp_path, where):
    data = image_tar()
    offsets = header_offsets(data)
    cut = {"before the last member": offsets[-2], "before test/b": offsets[-3],
           "at the end-of-archive marker": offsets[-1], "inside the end-of-archive marker": offsets[-1] + 512,
           "inside a header": offsets[-2] + 100}[where]
    path = tmp_path / "set.tar"
    path.write_bytes(data[:cut])
    with pytest.raises(DataError) as e:
        load(path, tmp_path)
    msg = one_line(e)
    assert msg.startswith(f"{path} is truncated (") and msg.endswith("; fetch it again"), msg
    assert "differ" not in msg


def test_a_tar_gz_cut_near_its_end_is_truncated_never_other_classes(tmp_path):
    whole = gzip.compress(image_tar())
    rng = random.Random(0)
    cuts = sorted({len(whole) - k for k in (1, 4, 8, 9, 12)} | {rng.randrange(len(whole) - 2000, len(whole))
                                                              for _ in range(12)})
    for cut in cuts:
        path = tmp_path / f"set-{cut}.tar.gz"
        path.write_bytes(whole[:cut])
        with pytest.raises(DataError) as e:
            load(path, tmp_path)
        msg = one_line(e)
        assert msg.startswith(f"{path} is truncated (") and msg.endswith("; fetch it again"), (cut, len(whole), msg)


def test_an_official_archive_cut_at_a_member_boundary_is_not_unpacked(tmp_path):
    data = tar_bytes([("cifar-10-batches-py/data_batch_1", b"x" * 3000), ("cifar-10-batches-py/test_batch", b"y")])
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(gzip.compress(data[:header_offsets(data)[-2]]))
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError) as e:
        archive.extract(path, tmp_path / "out")
    assert one_line(e).startswith(f"{path} is truncated (")


def test_a_lone_zero_block_followed_by_data_is_corrupt(tmp_path):
    data = image_tar()
    end = header_offsets(data)[-1]
    path = tmp_path / "set.tar"
    path.write_bytes(data[:end + 512] + b"\x01" * 512 + data[end + 1024:])
    with pytest.raises(DataError) as e:
        load(path, tmp_path)
    assert one_line(e).startswith(f"{path} is corrupt (")


def test_garbage_where_a_header_should_be_is_corrupt(tmp_path):
    data = image_tar()
    at = header_offsets(data)[-2]
    path = tmp_path / "set.tar"
    path.write_bytes(data[:at] + b"\x07" * 512 + data[at + 512:])
    with pytest.raises(DataError) as e:
        load(path, tmp_path)
    assert one_line(e).startswith(f"{path} is corrupt (")


# ---- item 2: duplicate members ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
@pytest.mark.parametrize("dup", ["set/test/a/1.png", "./set/train/b/2.png"])
def test_duplicate_members_are_refused(tmp_path, kind, dup):
    members = [(name, png(v)) for name, v in MEMBERS] + [(dup, png(99))]  # as `tar -r` appends a path again
    path = tmp_path / f"set.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile's "Duplicate name" for the first case
            for name, data in members:
                zf.writestr(name, data)
    else:
        data = tar_bytes(members)
        path.write_bytes(gzip.compress(data) if kind == "tar.gz" else data)
    with pytest.raises(DataError) as e:
        load(path, tmp_path)
    msg = one_line(e)
    assert msg.startswith(f"{path} holds {dup} twice") and "each path once" in msg, msg


def test_duplicate_members_are_refused_when_unpacking(tmp_path):
    path = tmp_path / "cifar-10-python.tar"
    path.write_bytes(tar_bytes([("d/data_batch_1", b"1"), ("d/test_batch", b"2"), ("d/data_batch_1", b"3")]))
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError) as e:
        archive.extract(path, tmp_path / "out")
    assert one_line(e).startswith(f"{path} holds d/data_batch_1 twice")


# ---- item 3: 16-bit PNGs ---------------------------------------------------------------------------------------


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits(tmp_path):
    root = tmp_path / "f"
    gradient = (np.arange(1024, dtype=np.uint16).reshape(32, 32) * 64 + 63)  # 63 ... 65535, every step of 64
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        im = Image.fromarray(gradient)
        assert im.mode == "I;16"
        im.save(root / split / "a" / "1.png")
        Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(root / split / "a" / "2.png")
    with Image.open(root / "train" / "a" / "1.png") as im:
        assert im.mode.startswith("I")  # what PIL decodes a 16-bit grayscale PNG to
    images = load_split("imagefolder", "train", root, cache_dir=tmp_path / "cache").images.numpy()
    expected = (gradient >> 8).astype(np.uint8)
    assert np.array_equal(images[0], np.stack([expected] * 3)), images[0, 0, 0, :8]
    assert images[0].max() == 255 and images[0].min() == 0 and len(np.unique(images[0])) == 256
    assert (images[1] == 7).all()


# ---- item 4b: encrypted zips -----------------------------------------------------------------------------------


def _encrypted_zip(path: Path) -> None:
    """A zip whose members carry the "encrypted" flag (bit 0), as ``zip -e`` writes them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, v in MEMBERS:
            zf.writestr(name, png(v))
    data = bytearray(buf.getvalue())
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.find(sig)
        while i >= 0:
            flags = struct.unpack_from("<H", data, i + at)[0]
            struct.pack_into("<H", data, i + at, flags | 1)
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))


def test_an_encrypted_zip_is_called_encrypted(tmp_path):
    path = tmp_path / "set.zip"
    _encrypted_zip(path)
    with pytest.raises(DataError) as e:
        load(path, tmp_path)
    msg = one_line(e)
    assert msg.startswith(f"{path} is an encrypted zip") and "without a password" in msg, msg
    assert "truncated" not in msg and "corrupt" not in msg


# ---- item 4c: Windows backslash paths --------------------------------------------------------------------------


def test_a_zip_with_backslash_paths_is_read(tmp_path):
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, v in MEMBERS:
            zf.writestr(name.replace("/", "\\"), png(v))
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist()[0] == "set\\train\\a\\1.png"
    splits = load(path, tmp_path)
    assert len(splits["train"]) == 4 and len(splits["test"]) == 3 and splits["train"].classes == ["a", "b"]
    assert splits["train"].images[0, 0, 0, 0] == 10 and splits["test"].images[2, 0, 0, 0] == 70


def test_backslash_paths_leaving_the_folder_are_still_refused_when_unpacking(tmp_path):
    for bad in ("..\\escape.txt", "\\abs\\data_batch_1"):
        path = tmp_path / "cifar-10-python.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(bad, b"x")
        (tmp_path / "out").mkdir(exist_ok=True)
        with pytest.raises(DataError, match="unsafe member path") as e:
            archive.extract(path, tmp_path / "out")
        one_line(e)
    assert not (tmp_path / "escape.txt").exists()


# ---- item 4e: control characters in class names ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["ca\nt", "tab\there", "cr\r"])
def test_a_class_folder_with_a_control_character_is_refused(tmp_path, capsys, name):
    root = tmp_path / "f"
    for split in ("train", "test"):
        for cls in ("dog", name):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "1.png").write_bytes(png(5))
    with pytest.raises(DataError) as e:
        load(root, tmp_path)
    msg = one_line(e)
    assert repr(name)[1:-1] in msg and str(root / "train") in msg and "rename" in msg, msg
    assert main(["data", "info", "--dataset", "imagefolder", "--data-root", str(root),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rename" in err and "Traceback" not in err


def test_a_class_with_a_newline_in_an_archive_is_refused(tmp_path):
    path = tmp_path / "set.tar"
    path.write_bytes(tar_bytes([(f"set/{s}/{c}/1.png", png(3)) for s in ("train", "test") for c in ("a", "b\nc")]))
    with pytest.raises(DataError) as e:
        load(path, tmp_path)
    msg = one_line(e)
    assert str(path) in msg and "b\\nc" in msg and "rename" in msg, msg
