"""Reading .tar/.tar.gz/.tgz/.zip archives member by member with bounded memory, and safe, atomic unpacking.

Every member's size is known from its header before a byte of it is read, so anything larger than the caller's
limit is refused up front: a small archive of zeros that unpacks to gigabytes costs neither memory nor disk. Links
are refused (no official archive holds one, and a link is how an archive reaches outside its folder), and errors
say which side failed: reading the archive (truncated, corrupt, unreadable) or writing the destination (full,
read-only), since the fixes differ.

A tar must end with its end-of-archive marker and a compressed one is read to its end-of-stream marker and
checksum: Python's tarfile takes a missing header for the end, so a download cut at a member boundary would read
as a smaller dataset. A path held twice (``tar -r`` appends it again) and encrypted zips are refused; a zip's
Windows backslashes are read as folder separators.
"""
from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ressenet.data.base import DataError, os_error_text
from ressenet.data.constants import IMAGE_SUFFIXES
from ressenet.files import CHUNK, file_hash

ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar", ".zip")

# Limits of the official-archive path (a CIFAR archive given as --data-root, and verified downloads).
# The largest member of any official CIFAR archive is CIFAR-100's training file: 50,000 records of 3,074 bytes =
# 153.7 MB in the binary variant, about 155.2 MB as the python pickle. 200 MB admits it with room and refuses
# anything bigger before a byte of it is written.
MAX_MEMBER_BYTES = 200 * 10**6
# An official archive unpacks to about 185 MB (CIFAR-10: six 31 MB batches). 1 GB admits an archive holding all
# four official folders (about 740 MB) and bounds the disk a hostile archive can fill with small members.
MAX_UNPACKED_BYTES = 10**9
# Official archives hold at most 9 entries; 10,000 admits any reasonable extra files and bounds a flood of empty ones.
MAX_MEMBERS = 10_000
# tar extension headers (pax records, GNU long names) hold a path and a few attributes, a few hundred bytes; Python's
# tarfile reads one whole into memory, so a larger one is refused before it is read.
MAX_TAR_HEADER_BYTES = 1 << 20


# Errors that mean the archive's bytes are bad (as opposed to an OSError with an errno: unreadable, I/O error).
# zipfile raises NotImplementedError for an unknown compression method and RuntimeError for an encrypted member.
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, ValueError,
            NotImplementedError, RuntimeError)
try:  # optional codecs of tarfile's "r|*"
    import lzma

    _CORRUPT += (lzma.LZMAError,)
except ImportError:  # pragma: no cover
    pass


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file whose name says it is an archive this module can unpack.

    False also when ``path`` cannot be examined (e.g. a folder above it is unreadable): the caller then reads it as
    a folder and reports the permission problem with the path.
    """
    try:
        return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)
    except OSError:
        return False


def archive_stem(path: Path) -> str:
    """The archive's name without its archive suffix (``cifar10-jpeg.tar.gz`` -> ``cifar10-jpeg``)."""
    lower = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


# ---- reading ---------------------------------------------------------------------------------------------------


def read_error(archive: Path, e: BaseException, what: str = "the archive is truncated or corrupt, fetch it again"
               ) -> DataError:
    """The one-line error for a failure while reading ``archive``: a permission or I/O problem names its errno and
    asks for a readable file; anything else is a damaged archive (``what`` says the fix)."""
    if isinstance(e, DataError):
        return e
    if isinstance(e, OSError) and e.errno is not None:
        return DataError(f"cannot read {archive}: {os_error_text(e)}; make it readable (check its permissions and "
                         f"the disk), or pass --data-root to another copy")
    if isinstance(e, EOFError):  # gzip, bz2, xz and zip: the compressed data stops before its end
        return truncated(archive, "the compressed data ends before its end-of-stream marker")
    if isinstance(e, tarfile.ReadError) and str(e) == "unexpected end of data":
        return truncated(archive, "a member's data is cut short")
    return DataError(f"cannot read {archive}: {type(e).__name__}: {e}; {what}")


def truncated(archive: Path, why: str) -> DataError:
    """The one-line error for an archive that ends early."""
    return DataError(f"{archive} is truncated ({why}); fetch it again")


def write_error(where: str, e: OSError, fix: str, doing: str = "") -> DataError:
    """The one-line error for a failure to write ``where`` (e.g. ``"the cache /x"``): ``cannot write the cache /x
    (unpacking a/b of c.tar.gz): [Errno 28] No space left on device; free space or pass --cache-dir ...``.

    ``fix`` names the other place to use; "free space or" is prepended when the disk or quota is full.
    """
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = f"free space or {fix}"
    return DataError(f"cannot write {where}{f' ({doing})' if doing else ''}: {os_error_text(e)}; {fix}")


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized extension headers, which tarfile would otherwise read whole into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE) and self.size > MAX_TAR_HEADER_BYTES:
            raise DataError(f"{getattr(tarfile_, 'name', None) or 'the archive'} holds a {self.size}-byte tar "
                            f"extension header, above the limit of {MAX_TAR_HEADER_BYTES} bytes (real ones hold a "
                            f"name and a few attributes); refusing the archive, it is corrupt or hostile")
        return super()._proc_member(tarfile_)

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        # tarfile ends the archive silently at a missing, cut or invalid header (offset > 0); which one it was is
        # kept for _check_tar_end.
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.HeaderError as e:
            tarfile_._ressenet_end = e  # type: ignore[attr-defined]
            raise


@dataclass
class Member:
    """One archive entry, before its data is read.

    Attributes:
        name: Path inside the archive, as stored.
        kind: ``"file"``, ``"dir"``, ``"link"`` (symbolic or hard) or ``"other"`` (devices, fifos).
        size: Uncompressed size in bytes from the header (0 for anything but files).
        target: A link's target, else ``""``.
    """

    name: str
    kind: str
    size: int
    target: str
    _open: Callable[[], IO[bytes]]

    def read(self, archive: Path, limit: int, why: str) -> bytes:
        """The member's bytes, refused before reading when its header says more than ``limit`` bytes (and never
        more than ``limit`` read, whatever the header said)."""
        if self.size > limit:
            raise too_big(archive, self.name, self.size, limit, why)
        try:
            with self._open() as f:
                data = f.read(self.size + 1)  # sized by the header: a read(limit) would allocate the limit each time
        except _CORRUPT + (OSError,) as e:
            raise read_error(archive, e) from e
        if len(data) > limit:
            raise too_big(archive, self.name, len(data), limit, why)
        return data

    def copy_to(self, archive: Path, target: Path, where: str, fix: str) -> None:
        """Streams the member into the new file ``target`` (inside ``where``, e.g. ``"the cache /x"``); reading and
        writing errors are reported apart."""
        doing = f"unpacking {self.name} of {archive.name}"
        try:
            out = open(target, "wb")
        except OSError as e:
            raise write_error(where, e, fix, doing) from e
        with out:
            try:
                src = self._open()
            except _CORRUPT + (OSError,) as e:
                raise read_error(archive, e) from e
            with src:
                while True:
                    try:
                        chunk = src.read(CHUNK)
                    except _CORRUPT + (OSError,) as e:
                        raise read_error(archive, e) from e
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise write_error(where, e, fix, doing) from e


def too_big(archive: Path, name: str, size: int, limit: int, why: str) -> DataError:
    """The one-line error for a member above a size limit (an archive bomb or a wrong file)."""
    return DataError(f"refusing {archive}:{name}: the member is {size} bytes, above the limit of {limit} bytes "
                     f"({why}); remove it from the archive")


def iter_members(archive: Path) -> Iterator[Member]:
    """Yields the archive's entries in order, in one sequential pass, holding at most one member's data at a time.

    A member's data can be read (:meth:`Member.read`, :meth:`Member.copy_to`) only while it is the current one.

    Raises:
        DataError: If the archive cannot be opened or read (naming the errno), is truncated (checked to its end
            once every member was yielded) or corrupt, holds a path twice, or is an encrypted zip.
    """
    seen: set[str] = set()

    def once(name: str, kind: str) -> None:  # `tar -r` appends a path again; both copies would be read
        if kind == "dir":
            return
        key = "/".join(part for part in name.split("/") if part not in ("", "."))  # "./a//b" is "a/b"
        if key in seen:
            raise DataError(f"{archive} holds {name} twice (as `tar -r` or `zip` leave a path added again); refusing "
                            f"it rather than read that file twice: re-create the archive with each path once")
        seen.add(key)

    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if info.flag_bits & 0x1:
                        raise DataError(f"{archive} is an encrypted zip ({info.filename} needs a password); ressenet "
                                        f"cannot read encrypted zips: repack it without a password")
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000  # a Unix symlink stored by zip -y
                    kind = "dir" if info.is_dir() or info.filename.endswith("\\") else "link" if is_link else "file"
                    # Zips made on Windows may separate folders with backslashes (the format says "/"); read alike.
                    # Paths leaving the folder stay refused where anything is written (_safe_target).
                    name = info.filename.replace("\\", "/")
                    once(name, kind)
                    yield Member(name, kind, 0 if kind == "dir" else info.file_size, "",
                                 lambda info=info: zf.open(info))
        else:
            # One sequential pass over the data, no seeking back; decompressed by Python's gzip/bz2/lzma readers,
            # which (unlike tarfile's own stream) check the end-of-stream marker and checksum when read to the end.
            with open(archive, "rb") as raw, _decompressed(raw) as stream, \
                    tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tf:
                while (m := tf.next()) is not None:
                    tf.members.clear()  # tarfile keeps every header it has seen; ours are used once
                    kind = ("file" if m.isreg() else "dir" if m.isdir() else
                            "link" if m.issym() or m.islnk() else "other")
                    once(m.name, kind)
                    yield Member(m.name, kind, m.size if kind == "file" else 0, m.linkname,
                                 lambda m=m: tf.extractfile(m))  # type: ignore[arg-type,return-value]
                _check_tar_end(archive, tf)
    except DataError:
        raise
    except _CORRUPT + (OSError,) as e:
        raise read_error(archive, e) from e


def _decompressed(raw: IO[bytes]) -> IO[bytes]:
    """The tar stream inside ``raw``: gzip, bzip2 and xz/lzma are recognised by their magic bytes (as tarfile's
    ``"r|*"`` does), anything else is read as a plain tar."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")):
        import lzma  # optional in a Python build, as for tarfile

        return lzma.LZMAFile(raw)
    return raw


def _check_tar_end(archive: Path, tf: tarfile.TarFile) -> None:
    """Refuses a tar whose members ended without the end-of-archive marker (two 512-byte blocks of zeros), then
    reads the rest of the stream, so that a compressed one is checked to its end-of-stream marker.

    tarfile treats a missing, cut or invalid header after the first member as the end of the archive: a download
    stopped at a member boundary would otherwise read as a smaller dataset.
    """
    end = getattr(tf, "_ressenet_end", None)
    at = tf.offset
    stream = tf.fileobj
    assert stream is not None
    if isinstance(end, tarfile.EOFHeaderError):
        second = stream.read(tarfile.BLOCKSIZE)
        if len(second) < tarfile.BLOCKSIZE:
            raise truncated(archive, f"the tar data ends at byte {at + tarfile.BLOCKSIZE + len(second)}, inside its "
                                     f"end-of-archive marker")
        if second.count(0) != tarfile.BLOCKSIZE:
            raise DataError(f"{archive} is corrupt (a lone zero block at byte {at} of the tar data, followed by more "
                            f"data instead of the end-of-archive marker); fetch it again")
    elif isinstance(end, tarfile.EmptyHeaderError):
        raise truncated(archive, f"the tar data ends at byte {at}, after a member, without the end-of-archive marker")
    elif isinstance(end, tarfile.TruncatedHeaderError):
        raise truncated(archive, f"the tar data ends inside the member header at byte {at}")
    else:
        raise DataError(f"{archive} is corrupt (byte {at} of the tar data holds no valid member header nor the "
                        f"end-of-archive marker); fetch it again")
    while stream.read(CHUNK):  # record padding; for a compressed archive, to its end-of-stream marker and checksum
        pass


def file_digest(path: Path, salt: str) -> str:
    """sha256 hex digest of ``salt`` then the file's bytes, read in 1 MiB chunks.

    Raises:
        DataError: If the file cannot be read.
    """
    try:
        return file_hash(path, "sha256", salt.encode())
    except OSError as e:
        raise read_error(path, e) from e


# ---- unpacking -------------------------------------------------------------------------------------------------


def _safe_target(archive: Path, dest: Path, root: Path, name: str) -> Path:
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(f"{archive} holds the unsafe member path {name!r}; refusing to unpack it (it is not an "
                        f"official archive, fetch it again)")
    target = dest.joinpath(*rel.parts)
    if not target.resolve().is_relative_to(root):
        raise DataError(f"{archive} holds the unsafe member path {name!r}; refusing to unpack it (it is not an "
                        f"official archive, fetch it again)")
    return target


def extract(archive: Path, dest: Path, *, where: str | None = None,
            fix: str = "pass --cache-dir (or set RESSENET_CACHE) to a writable folder",
            max_member_bytes: int = MAX_MEMBER_BYTES, max_total_bytes: int = MAX_UNPACKED_BYTES,
            max_members: int = MAX_MEMBERS) -> None:
    """Extracts ``archive`` into the existing folder ``dest`` in one pass, with limits for an official archive.

    Refused before anything of it is written: members landing outside ``dest`` (absolute paths, ``..``), links,
    devices and fifos, a member above ``max_member_bytes``, a running total above ``max_total_bytes``, more than
    ``max_members`` entries. What was written before a refusal stays in ``dest`` (callers unpack into a temporary
    folder and delete it on failure).

    Args:
        archive: A .tar/.tar.gz/.tgz/.zip file.
        dest: Existing folder to unpack into.
        where: How errors name the place written, e.g. ``"the cache /x/extracted"`` (default: ``dest``).
        fix: What to tell the user when writing into ``dest`` fails (disk full, read-only).

    Raises:
        DataError: If the archive cannot be read, is corrupt, holds a refused member, or ``dest`` cannot be written.
    """
    root = dest.resolve()
    where = where or str(dest)
    total = count = images = 0
    why = "the largest official CIFAR file is about 155 MB"
    for m in iter_members(archive):
        count += 1
        images += PurePosixPath(m.name).suffix.lower() in IMAGE_SUFFIXES
        if count > max_members:
            if images > count // 2:
                raise DataError(f"{archive} is an image-folder archive ({images} of its first {count} entries are "
                                f"images, e.g. {m.name}), not an official CIFAR archive; read it with --dataset "
                                f"imagefolder")
            raise DataError(f"{archive} holds more than {max_members} entries, far more than an official CIFAR "
                            f"archive (under 10); refusing to unpack it")
        if m.kind == "link":
            raise DataError(f"{archive} holds the link {m.name} -> {m.target}; links are refused (an official CIFAR "
                            f"archive holds only folders and regular files), fetch the archive again")
        if m.kind == "other":
            raise DataError(f"{archive} holds {m.name}, which is a device or fifo, not a file; refusing to unpack "
                            f"it (an official CIFAR archive holds only folders and regular files)")
        target = _safe_target(archive, dest, root, m.name)
        if m.kind == "file":
            if m.size > max_member_bytes:
                raise too_big(archive, m.name, m.size, max_member_bytes, why)
            total += m.size
            if total > max_total_bytes:
                raise DataError(f"refusing {archive}: its members add up to more than {max_total_bytes} bytes, "
                                f"several times an official CIFAR archive's contents (about 185 MB); it is not an "
                                f"official archive")
        if m.kind == "file" and target == dest:
            raise DataError(f"{archive} holds a file with the empty name {m.name!r}; refusing to unpack it")
        try:
            (target if m.kind == "dir" else target.parent).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(where, e, fix, f"unpacking {m.name} of {archive.name}") from e
        if m.kind == "file":
            m.copy_to(archive, target, where, fix)


def unpack_to_cache(archive: Path, cache_dir: Path) -> Path:
    """Unpacks ``archive`` once into ``cache_dir/extracted/`` and returns the folder holding its contents.

    The folder name hashes the archive's resolved path, size and mtime, so a changed archive unpacks afresh. Work
    happens in a temporary folder that is renamed into place only when complete, so an interrupted run never
    leaves a half-unpacked folder that a later run would trust. Nothing is written beside the archive (shared data
    is read-only).

    Raises:
        DataError: If the cache folder cannot be written (naming the OS error: full disk, read-only), the archive is
            unreadable or corrupt, or it holds a refused member (see :func:`extract`).
    """
    try:
        st = archive.stat()
    except OSError as e:
        raise read_error(archive, e) from e
    key = hashlib.sha256(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    parent = cache_dir / "extracted"
    final = parent / f"{archive_stem(archive)}-{key}"
    fix = "pass --cache-dir (or set RESSENET_CACHE) to a writable folder"
    try:
        if final.is_dir():
            return final
    except OSError as e:
        raise DataError(f"cannot read the cache {parent}: {os_error_text(e)}; make it readable, or pass --cache-dir "
                        f"(or set RESSENET_CACHE) to a folder of your own") from e
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    except OSError as e:
        raise write_error(f"the cache {parent}", e, fix) from e
    try:
        extract(archive, tmp, where=f"the cache {parent}", fix=fix)
        try:
            os.rename(tmp, final)
        except OSError as e:
            # Another process finished the same extraction first; its copy is as good as ours.
            if not final.is_dir():
                raise write_error(f"the cache {parent}", e, fix, f"renaming {tmp.name} to {final.name}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
