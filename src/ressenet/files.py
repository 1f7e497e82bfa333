"""File primitives at the bottom of the package: atomic writes, temporary-file clean-up, chunked hashes, the cache,
and the finiteness check every reader applies to numbers it reads back.

Every layer (data, models, weights, engine, experiments) may import this module; it imports none of them, only
:mod:`ressenet.errors`. A crash at any moment of an atomic write leaves the previous good file in place.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ressenet.errors import RessenetError

__all__ = ["CHUNK", "CACHE_ENV", "default_cache_dir", "fsync_dir", "atomic_write", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_json", "remove_orphans", "file_hash", "sha256_file", "finite"]

CHUNK = 1 << 20  # bytes read at a time: hashing and copying large files in bounded memory
CACHE_ENV = "RESSENET_CACHE"


def default_cache_dir() -> Path:
    """Cache directory: ``$RESSENET_CACHE``, else ``$XDG_CACHE_HOME/ressenet``, else ``~/.cache/ressenet``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ressenet"
    return Path.home() / ".cache" / "ressenet"


def fsync_dir(path: Path) -> None:
    """Flushes a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would leave: the file's own when it exists, else 0o666 less the
    umask. (``mkstemp`` makes its file 0o600, which a rename would carry over to the result.)"""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Writes through ``write(fileobj)`` into a temporary file beside ``path``, fsyncs, then renames over it.

    Raises:
        RessenetError: If the file cannot be written (full disk, read-only folder); the previous file is kept.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _new_file_mode(path))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # full disk, read-only folder, no permission: one line; the previous file is untouched
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise RessenetError(f"cannot write {path}: {e.strerror or e}; the previous {path.name}, if any, is kept; "
                            f"free space or make the folder writable, then run the same command again") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_orphans(folder: str | Path, names: tuple[str, ...]) -> None:
    """Deletes temporary files a killed writer left beside ``names`` (``.last.pt.*.tmp`` and the like)."""
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write` of ``obj`` as indented JSON ending in a newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_hash(path: str | Path, algorithm: str = "sha256", salt: bytes = b"") -> str:
    """Hex digest (``algorithm``, e.g. ``"md5"``) of ``salt`` then the file's bytes, read in :data:`CHUNK` pieces.

    Raises:
        OSError: If the file cannot be read (callers word it for their own users).
    """
    h = hashlib.new(algorithm, salt)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file (a weights file's name and its check on download)."""
    return file_hash(path)


def finite(value: Any) -> bool:
    """Whether ``value`` is a number (not a bool) that is finite as a float (a 400-digit integer is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
