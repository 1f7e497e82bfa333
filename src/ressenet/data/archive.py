"""Safe, atomic unpacking of .tar/.tar.gz/.tgz/.zip archives."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ressenet.data.base import DataError

ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar", ".zip")


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file whose name says it is an archive this module can unpack."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    """The archive's name without its archive suffix (``cifar10-jpeg.tar.gz`` -> ``cifar10-jpeg``)."""
    lower = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def extract(archive: Path, dest: Path) -> None:
    """Extracts ``archive`` into the existing folder ``dest``, refusing members that would land outside it.

    Raises:
        DataError: If the archive cannot be read or holds unsafe members.
    """
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                root = dest.resolve()
                for member in zf.namelist():
                    if not (dest / member).resolve().is_relative_to(root):
                        raise DataError(f"{archive} holds the unsafe member path {member!r}; refusing to unpack it")
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                # The "data" filter rejects absolute paths, "..", links out of dest and device files.
                tf.extractall(dest, filter="data")
    except DataError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"cannot unpack {archive}: {type(e).__name__}: {e}; the archive is truncated or corrupt, "
                        f"fetch it again") from e


def unpack_to_cache(archive: Path, cache_dir: Path) -> Path:
    """Unpacks ``archive`` once into ``cache_dir/extracted/`` and returns the folder holding its contents.

    The folder name hashes the archive's resolved path, size and mtime, so a changed archive unpacks afresh. Work
    happens in a temporary folder that is renamed into place only when complete, so an interrupted run never
    leaves a half-unpacked folder that a later run would trust. Nothing is written beside the archive (shared data
    is read-only).

    Raises:
        DataError: If the cache folder cannot be written or the archive is unreadable.
    """
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    parent = cache_dir / "extracted"
    final = parent / f"{archive_stem(archive)}-{key}"
    if final.is_dir():
        return final
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    except OSError as e:
        raise DataError(f"cannot write the cache folder {parent} ({e.strerror or e}); set RESSENET_CACHE or pass "
                        f"--cache-dir to a writable folder") from e
    try:
        extract(archive, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same extraction first; its copy is as good as ours.
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
