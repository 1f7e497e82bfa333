"""Verified download of the official CIFAR archives.

Every step happens under a temporary name in the data root: the archive streams to a hidden ``.part`` file and is
checked against its md5, unpacked into a hidden folder whose members are checked one by one, and only then renamed
to the folder name the loaders look for. A failure at any step removes the temporaries, so nothing half-downloaded
is ever found later and taken for a whole dataset (and a hard kill leaves only hidden names the loaders ignore).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ressenet.data.archive import extract, write_error
from ressenet.data.base import DataError, os_error_text
from ressenet.data.constants import ARCHIVES, DOWNLOADABLE, OFFICIAL_URL_BASE, URL_BASE_ENV, ArchiveSpec, join_names
from ressenet.files import CHUNK, file_hash


# The official archives are 163 to 171 MB (cifar-10-python.tar.gz, 170,498,071 bytes, is the largest); a server
# sending more than 250 MB is not sending one, so the transfer stops there instead of filling the disk.
MAX_DOWNLOAD_BYTES = 250 * 10**6

_WRITE_FIX = "pass --data-root to a writable folder"


def archive_url(spec: ArchiveSpec) -> str:
    """The archive's URL: ``$RESSENET_CIFAR_URL_BASE/<file>`` when that is set, else the official one."""
    base = os.environ.get(URL_BASE_ENV) or OFFICIAL_URL_BASE
    return f"{base.rstrip('/')}/{spec.filename}"


def _fetch(url: str, dest: Path, progress: bool) -> str:
    """Streams ``url`` into ``dest`` and returns the md5 of what arrived."""
    h = hashlib.md5()
    where = f"the data root {dest.parent}"
    too_big = (f"download of {url} refused: the archive is larger than {MAX_DOWNLOAD_BYTES} bytes, and no official "
               f"CIFAR archive exceeds 171 MB; check the URL ({URL_BASE_ENV})")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            if total is not None and total > MAX_DOWNLOAD_BYTES:
                raise DataError(too_big)
            bar = None
            if progress and sys.stderr.isatty():
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=Path(dest.name).name, leave=False)
            got = 0
            try:
                try:
                    f = open(dest, "wb")
                except OSError as e:
                    raise write_error(where, e, _WRITE_FIX, f"downloading {Path(url).name}") from e
                with f:
                    while chunk := resp.read(CHUNK):
                        got += len(chunk)
                        if got > MAX_DOWNLOAD_BYTES:
                            raise DataError(too_big)
                        try:
                            f.write(chunk)
                        except OSError as e:
                            raise write_error(where, e, _WRITE_FIX, f"downloading {Path(url).name}") from e
                        h.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except DataError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:  # offline, 404, refused, bad URL
        reason = getattr(e, "reason", None) or e
        raise DataError(f"download of {url} failed ({reason}); check the network (or download the archive elsewhere "
                        f"and pass --data-root to the folder holding its unpacked contents)") from e
    except Exception as e:  # http.client.IncompleteRead and other HTTPExceptions: the server stopped mid-stream
        raise DataError(f"download of {url} was interrupted ({type(e).__name__}: {e}); run it again") from e
    if total is not None and got != total:
        raise DataError(f"download of {url} was interrupted: got {got} of {total} bytes; run it again")
    return h.hexdigest()


def download(name: str, root: str | Path, *, url: str | None = None, progress: bool = True,
             variant: str = "python", md5: str | None = None,
             member_md5: dict[str, str | None] | None = None) -> Path:
    """Downloads, verifies and unpacks an official CIFAR archive into ``root``.

    Does nothing when the unpacked folder is already there. The archive itself is not kept.

    Args:
        name: One of ``DOWNLOADABLE`` (constants.py): ``"cifar10"`` or ``"cifar100"``.
        root: Data root; the archive's folder (e.g. ``cifar-10-batches-py``) is created inside it.
        url: Full URL of the archive (``file://`` works); default: ``$RESSENET_CIFAR_URL_BASE/<file>`` or official.
        progress: Show a progress bar (only when stderr is a terminal).
        variant: ``"python"`` (pickles, what torchvision uses) or ``"binary"``.
        md5: Expected md5 of the archive; default from the official table (tests pass their own archives' md5).
        member_md5: Expected member file -> md5 (None: presence only); default from the official table.

    Returns:
        The unpacked folder, e.g. ``root/cifar-10-batches-py``.

    Raises:
        DataError: Unknown name/variant, network failure, interrupted transfer, md5 mismatch or missing member.
    """
    if (name, variant) not in ARCHIVES:
        variants = list(dict.fromkeys(v for _, v in ARCHIVES))
        raise DataError(f"cannot download {name!r} ({variant} variant): downloads exist for "
                        f"{join_names(DOWNLOADABLE)}, variants {join_names(variants)}")
    spec = ARCHIVES[(name, variant)]
    root = Path(root)
    final = root / spec.folder
    try:
        if final.is_dir():
            return final
        created_root = not root.exists()
    except OSError as e:
        raise DataError(f"cannot read the data root {root}: {os_error_text(e)}; make it readable, or pass --data-root "
                        f"to a folder of your own") from e
    url = url or archive_url(spec)
    expected = md5 if md5 is not None else spec.md5
    members = member_md5 if member_md5 is not None else spec.members
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, part_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=root)
        os.close(fd)
    except OSError as e:
        _remove_if_empty(root, created_root)
        raise write_error(f"the data root {root}", e, _WRITE_FIX) from e
    part = Path(part_name)
    tmp_dir: Path | None = None
    try:
        actual = _fetch(url, part, progress)
        if actual != expected:
            raise DataError(f"archive {spec.filename} from {url} has md5 {actual}, expected {expected}; the file is "
                            f"corrupt or not the official one, run the download again")
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.tmp-", dir=root))
        extract(part, tmp_dir, where=f"the data root {root}", fix=_WRITE_FIX)
        unpacked = tmp_dir / spec.folder
        for member, want in members.items():
            path = unpacked / member
            if not path.is_file():
                raise DataError(f"archive {spec.filename} from {url} lacks the member {spec.folder}/{member}; it is "
                                f"not the official archive, fetch it again")
            if want is not None and (got := file_hash(path, "md5")) != want:
                raise DataError(f"member {spec.folder}/{member} of {spec.filename} has md5 {got}, expected {want}; "
                                f"the archive is corrupt, fetch it again")
        try:
            os.rename(unpacked, final)
        except OSError:
            if not final.is_dir():  # a concurrent download finishing first is fine; anything else is not
                raise
        return final
    except OSError as e:
        raise DataError(f"cannot finish unpacking {spec.filename} into {root}: {os_error_text(e)}; check free space "
                        f"and permissions, then run the download again") from e
    finally:
        part.unlink(missing_ok=True)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        _remove_if_empty(root, created_root)


def _remove_if_empty(root: Path, created: bool) -> None:
    """Removes the data root a failed first download created, so that it leaves no trace."""
    try:
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    except OSError:
        pass
