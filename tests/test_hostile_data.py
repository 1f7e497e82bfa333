"""Hostile and unlucky inputs to the data package (issue 16, items 3, 4 and the data part of 8).

Every fixture is built here: folders copied the way ``cp -p`` leaves them, archives holding decompression bombs or
links, pickles written by Python 3, a latin-1 class-name file, a full or read-only cache. Each case must end in one
line (a :class:`DataError`, which the CLI prints as is) naming the file and the fix, with nothing half-written left in
the cache, and hostile archives must be refused before they cost memory or disk.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cifar_fakes import make_cifar_archive, write_cifar, write_image_folder
from PIL import Image

from ressenet.cli import main
from ressenet.data import DataError, archive, download, fetch, imagefolder, load_datasets, load_pickle, load_split
from ressenet.data.archive import MAX_MEMBER_BYTES, MAX_TAR_HEADER_BYTES
from ressenet.data.imagefolder import MAX_IMAGE_BYTES
from ressenet.files import file_hash

BOMB_BYTES = 300 << 20  # "several hundred MB" of zeros, a few hundred KB once gzipped


# ---- helpers ---------------------------------------------------------------------------------------------------


def one_line(exc_info: pytest.ExceptionInfo) -> str:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, DataError) and "\n" not in msg and "Traceback" not in msg
    return msg


def assert_nothing_half_written(cache: Path) -> None:
    """No temporary file or folder (they all start with ".") anywhere in the cache, and no unpacked folder."""
    if not cache.exists():
        return
    leftovers = [p for p in cache.rglob("*") if p.name.startswith(".")]
    assert not leftovers, leftovers
    extracted = cache / "extracted"
    assert not extracted.exists() or not any(extracted.iterdir()), list(extracted.iterdir())


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=0)  # stored: the size depends on the shape only
    return buf.getvalue()


class Zeros(io.RawIOBase):
    """``size`` bytes: ``head`` then zeros, generated as read (nothing of that size is ever held)."""

    def __init__(self, size: int, head: bytes = b"") -> None:
        self.left, self.head = size, head

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self.left)
        if n <= 0:
            return 0
        chunk = (self.head[:n] + bytes(max(0, n - len(self.head[:n]))))
        self.head = self.head[n:]
        b[:n] = chunk
        self.left -= n
        return n


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def add_zeros(tf: tarfile.TarFile, name: str, size: int, head: bytes = b"") -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    tf.addfile(info, io.BufferedReader(Zeros(size, head), buffer_size=1 << 20))


def small_image_archive(path: Path, extra: Callable[[tarfile.TarFile], None]) -> Path:
    """A .tar.gz of a valid 1-class image folder ``set/``, plus whatever ``extra(tf)`` adds."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for split in ("train", "test"):
            add_bytes(tf, f"set/{split}/a/0.png", png_bytes(np.zeros((32, 32, 3), np.uint8)))
        extra(tf)
    return path


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height pixels whose compressed data stays small (all zero rows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = bytes(1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def run_unprivileged(code: str) -> str:
    """Runs ``code`` (which prints a result) in a subprocess that file permissions apply to: as is for a normal
    user; for root, with the capabilities that bypass them dropped (setpriv), or the test is skipped."""
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if res.returncode and "setpriv" in res.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


_LOAD_AND_REPORT = textwrap.dedent("""
    import sys
    from ressenet.data import DataError, load_split
    try:
        load_split({name!r}, "train", {root!r}, cache_dir={cache!r})
        print("loaded")
    except DataError as e:
        print("DataError: " + str(e))
""")


# ---- item 3: the image-folder cache is keyed by content ----------------------------------------------------------


def _folder_like_cp_p(root: Path, value: int) -> None:
    """One 1-class folder whose PNGs have the same names, sizes and mtimes whatever ``value`` (the pixel value)."""
    for split in ("train", "test"):
        d = root / split / "cls"
        d.mkdir(parents=True)
        for i in range(3):
            (d / f"{i}.png").write_bytes(png_bytes(np.full((32, 32, 3), value + i, np.uint8)))
            os.utime(d / f"{i}.png", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))


def test_same_names_sizes_and_mtimes_but_other_pixels_get_their_own_cache_entry(tmp_path):
    cache = tmp_path / "cache"
    a, b = tmp_path / "a" / "data", tmp_path / "b" / "data"  # same folder name, as two copies of one dataset
    _folder_like_cp_p(a, 10)
    _folder_like_cp_p(b, 110)
    for p, q in zip(sorted(a.rglob("*.png")), sorted(b.rglob("*.png"))):  # the old key's inputs are all equal
        assert p.relative_to(a) == q.relative_to(b) and p.stat().st_size == q.stat().st_size
        assert p.stat().st_mtime_ns == q.stat().st_mtime_ns
    assert int(load_split("imagefolder", "train", a, cache_dir=cache).images[0, 0, 0, 0]) == 10
    assert int(load_split("imagefolder", "train", b, cache_dir=cache).images[0, 0, 0, 0]) == 110
    assert int(load_split("imagefolder", "train", a, cache_dir=cache).images[0, 0, 0, 0]) == 10
    assert len(list((cache / "imagefolder").glob("data-train-*.npz"))) == 2
    assert_nothing_half_written(cache)


def test_identical_content_elsewhere_shares_the_entry(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    expected = write_image_folder(tmp_path / "one" / "set")
    load_datasets("imagefolder", tmp_path / "one" / "set", cache_dir=cache)
    shutil.copytree(tmp_path / "one" / "set", tmp_path / "two" / "set")  # cp -rp to another place

    def no_decode(items):
        raise AssertionError("decoded again although the content is cached")

    monkeypatch.setattr(imagefolder, "_decode", no_decode)
    ds = load_split("imagefolder", "train", tmp_path / "two" / "set", cache_dir=cache)
    assert np.array_equal(ds.images.numpy(), expected["train"][0])


def _entry(cache: Path, prefix: str) -> Path:
    (path,) = (cache / "imagefolder").glob(f"{prefix}-train-*.npz")
    return path


@pytest.mark.parametrize("damage", ["other content", "truncated", "shapes"])
def test_a_mismatched_or_corrupt_cache_entry_is_rebuilt_with_a_note(tmp_path, damage):
    cache = tmp_path / "cache"
    a = write_image_folder(tmp_path / "a" / "set", seed=1)
    b = write_image_folder(tmp_path / "b" / "set", seed=2)
    load_split("imagefolder", "train", tmp_path / "a" / "set", cache_dir=cache)
    entry_a = _entry(cache, "set")
    load_split("imagefolder", "train", tmp_path / "b" / "set", cache_dir=cache)
    entry_b = next(p for p in (cache / "imagefolder").glob("set-train-*.npz") if p != entry_a)
    if damage == "other content":  # a's pixels under b's name: the stored key gives it away
        shutil.copyfile(entry_a, entry_b)
    elif damage == "truncated":
        entry_b.write_bytes(entry_b.read_bytes()[:500])
    else:  # the right key, but arrays that do not fit each other
        with np.load(entry_b) as z:
            parts = dict(z)
        np.savez(entry_b, **{**parts, "labels": parts["labels"][:-1]})
    with pytest.warns(UserWarning) as notes:
        ds = load_split("imagefolder", "train", tmp_path / "b" / "set", cache_dir=cache)
    assert np.array_equal(ds.images.numpy(), b["train"][0]) and not np.array_equal(ds.images.numpy(), a["train"][0])
    (note,) = [str(w.message) for w in notes]
    assert "\n" not in note and str(entry_b) in note and "decoding the images again" in note
    # Rewritten: the next load is quiet and needs no decode.
    with np.load(entry_b) as z:
        assert np.array_equal(z["images"], b["train"][0])
    assert_nothing_half_written(cache)


def test_folder_beyond_the_memory_budget_is_read_again_and_checked(tmp_path, monkeypatch):
    """Past _HOLD_BYTES of encoded images a folder's files are hashed, dropped, and read again to decode; a file
    rewritten in between is noticed, not cached under the old content's key."""
    expected = write_image_folder(tmp_path / "f")
    monkeypatch.setattr(imagefolder, "_HOLD_BYTES", 0)
    ds = load_split("imagefolder", "train", tmp_path / "f", cache_dir=tmp_path / "c1")
    assert np.array_equal(ds.images.numpy(), expected["train"][0])

    real_decode = imagefolder._decode

    def rewrite_then_decode(items):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "f" / "train" / "dog" / "2.png")
        return real_decode(items)

    monkeypatch.setattr(imagefolder, "_decode", rewrite_then_decode)
    with pytest.raises(DataError) as e:
        load_split("imagefolder", "train", tmp_path / "f", cache_dir=tmp_path / "c2")
    assert one_line(e).startswith(f"{tmp_path / 'f' / 'train' / 'dog' / '2.png'} changed while the folder was being")
    assert_nothing_half_written(tmp_path / "c2")
    assert not (tmp_path / "c2").exists()


# ---- item 4: bounded memory on hostile input -----------------------------------------------------------------


_MEASURE = textwrap.dedent("""
    import json, resource, sys
    from ressenet.data import DataError, load_split
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load_split({name!r}, "train", {root!r}, cache_dir={cache!r})
        error = None
    except DataError as e:
        error = str(e)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"error": error, "growth_bytes": (after - before) * 1024}}))
""")


def _measure(name: str, root: Path, cache: Path) -> tuple[str, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", _MEASURE.format(name=name, root=str(root), cache=str(cache))],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["error"], out["growth_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_image_bomb_in_an_archive_is_refused_before_it_is_read(tmp_path, kind):
    bomb = tmp_path / f"bomb.{kind}"
    member = "set/train/a/1.png"
    if kind == "tar.gz":
        small_image_archive(bomb, lambda tf: add_zeros(tf, member, BOMB_BYTES, head=b"\x89PNG\r\n\x1a\n"))
    else:
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
            for split in ("train", "test"):
                zf.writestr(f"set/{split}/a/0.png", png_bytes(np.zeros((32, 32, 3), np.uint8)))
            with zf.open(member, "w", force_zip64=True) as f:
                shutil.copyfileobj(io.BufferedReader(Zeros(BOMB_BYTES, b"\x89PNG\r\n\x1a\n")), f, 1 << 20)
    assert bomb.stat().st_size < BOMB_BYTES // 100  # a small archive, hundreds of MB unpacked
    cache = tmp_path / "cache"
    error, growth = _measure("imagefolder", bomb, cache)
    assert error is not None and "\n" not in error
    assert f"{bomb}:{member}" in error and str(MAX_IMAGE_BYTES) in error and str(BOMB_BYTES) in error
    assert growth < 64 << 20, f"peak memory grew by {growth >> 20} MB for a {BOMB_BYTES >> 20} MB member"
    assert_nothing_half_written(cache)
    assert not (cache / "imagefolder").exists() or not any((cache / "imagefolder").iterdir())


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 10000)])  # above twice PIL's limit, and between 1x and 2x
def test_image_declaring_huge_dimensions_is_refused_from_its_header(tmp_path, size):
    data = huge_png(*size)
    assert len(data) < MAX_IMAGE_BYTES  # passes the byte limit: only the pixel check can catch it
    bomb = small_image_archive(tmp_path / "bomb.tar.gz", lambda tf: add_bytes(tf, "set/train/a/1.png", data))
    with pytest.raises(DataError) as e:
        load_split("imagefolder", "train", bomb, cache_dir=tmp_path / "cache")
    msg = one_line(e)
    assert f"{bomb}:set/train/a/1.png" in msg and "pixels" in msg and "not decoded" in msg
    assert_nothing_half_written(tmp_path / "cache")


def test_oversized_file_in_a_folder_is_refused_unread(tmp_path):
    write_image_folder(tmp_path / "f")
    bomb = tmp_path / "f" / "train" / "cat" / "9.png"
    with open(bomb, "wb") as f:  # sparse: 300 MB long, no disk used
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(BOMB_BYTES)
    with pytest.raises(DataError) as e:
        load_split("imagefolder", "train", tmp_path / "f", cache_dir=tmp_path / "cache")
    msg = one_line(e)
    assert str(bomb) in msg and str(MAX_IMAGE_BYTES) in msg and str(BOMB_BYTES) in msg
    assert_nothing_half_written(tmp_path / "cache")


def _cifar_bomb(tmp_path: Path) -> Path:
    """A binary CIFAR-10 archive whose first batch is MAX_MEMBER_BYTES + 1 bytes of zeros (well formed otherwise)."""
    fake = write_cifar(tmp_path / "src", "cifar10", "binary", train_size=5, test_size=2)
    path = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for m in sorted(fake.folder.iterdir()):
            if m.name != "data_batch_1.bin":
                tf.add(m, arcname=f"cifar-10-batches-bin/{m.name}")
        add_zeros(tf, "cifar-10-batches-bin/data_batch_1.bin", MAX_MEMBER_BYTES + 1)
    return path


@pytest.mark.slow
def test_official_archive_member_above_any_cifar_file_is_refused_before_extraction(tmp_path):
    bomb = _cifar_bomb(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        load_split("cifar10", "train", bomb, cache_dir=cache)
    msg = one_line(e)
    assert f"{bomb}:cifar-10-batches-bin/data_batch_1.bin" in msg and str(MAX_MEMBER_BYTES) in msg
    assert_nothing_half_written(cache)
    written = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
    assert written == 0

    # The download path refuses it the same way, and leaves nothing in the data root.
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        download("cifar10", root, url=bomb.as_uri(), variant="binary", md5=file_hash(bomb, "md5"), progress=False)
    assert "data_batch_1.bin" in one_line(e) and str(MAX_MEMBER_BYTES) in str(e.value)
    assert not root.exists()


def test_extraction_limits_on_total_size_member_count_and_headers(tmp_path):
    fake = write_cifar(tmp_path / "src", "cifar10", "binary", train_size=5, test_size=2)
    arc = tmp_path / "c.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(fake.folder, arcname="cifar-10-batches-bin")
    (tmp_path / "d1").mkdir()
    with pytest.raises(DataError, match="add up to more than 20000 bytes"):
        archive.extract(arc, tmp_path / "d1", max_total_bytes=20_000)
    (tmp_path / "d2").mkdir()
    with pytest.raises(DataError, match="more than 3 entries"):
        archive.extract(arc, tmp_path / "d2", max_members=3)
    # A pax header far above what names need is refused before tarfile reads it into memory.
    pax = tmp_path / "pax.tar.gz"
    with tarfile.open(pax, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("cifar-10-batches-bin/x")
        info.pax_headers = {"comment": "x" * (MAX_TAR_HEADER_BYTES + 1)}
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError) as e:
        load_split("cifar10", "train", pax, cache_dir=tmp_path / "cache")
    assert "extension header" in one_line(e) and str(MAX_TAR_HEADER_BYTES) in str(e.value)
    assert_nothing_half_written(tmp_path / "cache")


# ---- item 8: one line naming the file and the fix ------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_permission_denied_data_root(tmp_path, name):
    root = tmp_path / "root"
    if name == "cifar10":
        write_cifar(root, "cifar10", "python")
    else:
        write_image_folder(root)
    cache = tmp_path / "cache"
    root.chmod(0)
    try:
        out = run_unprivileged(_LOAD_AND_REPORT.format(name=name, root=str(root), cache=str(cache)))
    finally:
        root.chmod(0o755)
    assert out.startswith("DataError: ") and "\n" not in out
    assert f"cannot read the {'data root' if name == 'cifar10' else 'image folder'} {root}" in out
    assert "Permission denied" in out and "--data-root" in out
    assert_nothing_half_written(cache)


def test_unreadable_archive_is_not_called_corrupt(tmp_path):
    src = tmp_path / "src"
    write_image_folder(src / "set")
    arc = tmp_path / "set.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(src / "set", arcname="set")
    cache = tmp_path / "cache"
    arc.chmod(0)
    try:
        out = run_unprivileged(_LOAD_AND_REPORT.format(name="imagefolder", root=str(arc), cache=str(cache)))
    finally:
        arc.chmod(0o644)
    assert out.startswith(f"DataError: cannot read {arc}: [Errno 13] Permission denied") and "corrupt" not in out


class _FullDisk:
    """A file whose writes fail as on a full disk (after ``room`` bytes)."""

    def __init__(self, f, room: int = 0) -> None:  # type: ignore[no-untyped-def]
        self.f, self.room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.f, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _full_disk_open(monkeypatch: pytest.MonkeyPatch, module: object, room: int = 0) -> None:
    def fake_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        f = open(file, mode, *args, **kwargs)
        return _FullDisk(f, room) if "w" in mode else f

    monkeypatch.setattr(module, "open", fake_open, raising=False)


def test_full_cache_during_extraction_names_the_cache_and_errno(tmp_path, monkeypatch):
    arc, _, fake = make_cifar_archive(tmp_path / "remote", "cifar10")
    cache = tmp_path / "cache"
    with monkeypatch.context() as m:
        _full_disk_open(m, archive, room=4096)
        with pytest.raises(DataError) as e:
            load_split("cifar10", "train", arc, cache_dir=cache)
    msg = one_line(e)
    assert msg.startswith(f"cannot write the cache {cache / 'extracted'} (unpacking cifar-10-batches-py/")
    assert "[Errno 28] No space left on device; free space or pass --cache-dir" in msg and "corrupt" not in msg
    assert_nothing_half_written(cache)
    # With room again, the same call works: nothing stale was left to trust.
    assert np.array_equal(load_split("cifar10", "train", arc, cache_dir=cache).images.numpy(), fake.train_images)


def test_unwritable_cache_during_extraction(tmp_path):
    arc, _, _ = make_cifar_archive(tmp_path / "remote", "cifar10")
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    with pytest.raises(DataError) as e:
        load_split("cifar10", "train", arc, cache_dir=not_a_folder)
    msg = one_line(e)
    assert msg.startswith(f"cannot write the cache {not_a_folder / 'extracted'}: [Errno 20] Not a directory")
    assert "--cache-dir" in msg and "corrupt" not in msg


def test_read_only_cache_during_extraction(tmp_path):
    arc, _, _ = make_cifar_archive(tmp_path / "remote", "cifar10")
    cache = tmp_path / "cache"
    (cache / "extracted").mkdir(parents=True)
    (cache / "extracted").chmod(0o555)
    try:
        out = run_unprivileged(_LOAD_AND_REPORT.format(name="cifar10", root=str(arc), cache=str(cache)))
    finally:
        (cache / "extracted").chmod(0o755)
    assert out.startswith(f"DataError: cannot write the cache {cache / 'extracted'}: [Errno 13] Permission denied")
    assert "--cache-dir" in out
    assert_nothing_half_written(cache)


def test_full_disk_during_download_and_unpacking(tmp_path, monkeypatch):
    arc, md5, fake = make_cifar_archive(tmp_path / "remote", "cifar10")
    root = tmp_path / "data"
    for module in (fetch, archive):  # the .part file, then the unpacking
        with monkeypatch.context() as m:
            _full_disk_open(m, module)
            with pytest.raises(DataError) as e:
                download("cifar10", root, url=arc.as_uri(), md5=md5, member_md5=fake.member_md5, progress=False)
        msg = one_line(e)
        doing = "downloading cifar-10-python.tar.gz" if module is fetch else "unpacking cifar-10-batches-py/"
        assert msg.startswith(f"cannot write the data root {root} ({doing}")
        assert "[Errno 28] No space left on device; free space or pass --data-root" in msg and "network" not in msg
        assert not root.exists()  # no .part, no temporary folder, not even the root it created


def test_full_disk_for_the_decoded_image_cache_is_a_one_line_warning(tmp_path, monkeypatch):
    expected = write_image_folder(tmp_path / "f")
    cache = tmp_path / "cache"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    with pytest.warns(UserWarning) as notes:
        ds = load_split("imagefolder", "train", tmp_path / "f", cache_dir=cache)
    assert np.array_equal(ds.images.numpy(), expected["train"][0])
    (note,) = [str(w.message) for w in notes]
    assert "\n" not in note and "No space left on device" in note and "--cache-dir" in note
    assert_nothing_half_written(cache)
    assert not list((cache / "imagefolder").iterdir())


@pytest.mark.parametrize("link", ["symlink out", "hardlink in"])
def test_tar_links_are_refused_as_links(tmp_path, link):
    fake = write_cifar(tmp_path / "src", "cifar10", "python")
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(fake.folder, arcname="cifar-10-batches-py")
        info = tarfile.TarInfo("cifar-10-batches-py/extra")
        info.type, info.linkname = ((tarfile.SYMTYPE, "/etc/passwd") if link == "symlink out"
                                    else (tarfile.LNKTYPE, "cifar-10-batches-py/test_batch"))
        tf.addfile(info)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        load_split("cifar10", "train", arc, cache_dir=cache)
    msg = one_line(e)
    assert f"{arc} holds the link cifar-10-batches-py/extra -> {info.linkname}; links are refused" in msg
    assert "corrupt" not in msg and "truncated" not in msg
    assert_nothing_half_written(cache)


def test_links_in_an_image_folder_archive_are_refused(tmp_path):
    def add_link(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("set/train/a/1.png")
        info.type, info.linkname = tarfile.SYMTYPE, "0.png"
        tf.addfile(info)

    arc = small_image_archive(tmp_path / "set.tar.gz", add_link)
    with pytest.raises(DataError) as e:
        load_split("imagefolder", "train", arc, cache_dir=tmp_path / "cache")
    assert "holds the link set/train/a/1.png -> 0.png; links are refused" in one_line(e)
    assert_nothing_half_written(tmp_path / "cache")


@pytest.mark.parametrize("protocol,reference", [(2, "_codecs.encode"), (5, "_frombuffer")])
def test_python3_repickled_batch_is_called_what_it_is(tmp_path, protocol, reference):
    fake = write_cifar(tmp_path, "cifar10", "python")
    batch = fake.folder / "test_batch"
    with open(batch, "rb") as f:
        obj = pickle.load(f, encoding="bytes")  # what a Python 3 user does, then writes it back
    batch.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(DataError) as e:
        load_split("cifar10", "test", tmp_path)
    msg = one_line(e)
    assert str(batch) in msg and f"written by another Python or pickle protocol (protocol {protocol}" in msg
    assert reference in msg and "protocol=4" in msg and "malicious" not in msg
    # The suggested fix works, and still runs nothing.
    batch.write_bytes(pickle.dumps(obj, protocol=4))
    assert np.array_equal(load_split("cifar10", "test", tmp_path).images.numpy(), fake.test_images)
    assert load_pickle(batch)["labels"] == [int(v) for v in fake.test_labels]


def test_non_utf8_class_names(tmp_path, capsys):
    fake = write_cifar(tmp_path, "cifar10", "binary")
    meta = fake.folder / "batches.meta.txt"
    meta.write_bytes("\n".join(["avi\xf3n", *fake.classes[1:]]).encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_split("cifar10", "test", tmp_path)
    msg = one_line(e)
    assert msg.startswith(f"{meta} is not UTF-8 text (byte 0xf3 at offset 3)") and "UTF-8" in msg
    # The CLI prints it as one line and exits 2.
    assert main(["data", "info", "--dataset", "cifar10", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(meta) in err and "Traceback" not in err
