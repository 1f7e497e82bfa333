"""The "one folder per class" layout (``<root>/{train,test}/<class>/*.png|jpg``), as a folder or an archive.

Decoding 60,000 small JPEGs takes PIL several seconds, so decoded pixels are cached as one ``.npz`` per split under
the cache folder, keyed by content: a folder's key hashes every image's bytes (read once: the same bytes are hashed
and, on a miss, decoded) with its relative path and class, an archive's key hashes the archive's bytes. Two folders
with equal names, sizes and mtimes (``cp -p``, tar, rsync) but other pixels therefore never share an entry. A cache
file stores its key and is checked against it, and its arrays against each other, before use; a damaged or
mismatched one is rebuilt with a one-line warning, never used.

Archives are read member by member in one pass, never unpacked to disk: a Python ``tarfile`` extraction of 60,000
files took 20 s here, reading them in memory 3 s, and this way nothing is written beside the (possibly read-only)
source. Each image is decoded as it is read, so at most one encoded image is held at a time.

Memory stays bounded on hostile input: an image file or member above ``MAX_IMAGE_BYTES`` is refused before it is
read (from its size), an image whose header declares anything but 32x32 pixels before its pixels are decoded (PIL's
own decompression-bomb check refuses absurd sizes even earlier), and only PNG and JPEG decoders are used.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from ressenet.data.archive import archive_stem, file_digest, is_archive, iter_members
from ressenet.names import natural_key
from ressenet.data.base import DataError, ImageDataset, os_error_text, unreadable_root
from ressenet.data.constants import IMAGE_SUFFIXES, SPLITS

# Bump when the cache file's content or layout changes, so old entries are never misread.
# 2: keyed by content (image bytes), the key and a version stored inside and checked on load.
_CACHE_VERSION = 2
_SIZE = (32, 32)
_LAYOUT = "train/<class>/*.png|jpg and test/<class>/*.png|jpg"
_FORMATS = ("PNG", "JPEG")  # the only decoders used: what the suffixes promise, and less decoder surface

# The largest image file or archive member read. A 32x32 RGB image is 3,072 bytes of pixels, a few KB as PNG or
# JPEG; even with a large ICC profile or EXIF block a real one stays far below 1 MB. 4 MiB refuses decompression
# bombs (a 2 MB .tar.gz can hold a 400 MB "image") and files that are not such images before they are read whole,
# so one image never costs more than this in memory.
MAX_IMAGE_BYTES = 4 << 20
# The largest image accepted, in pixels: exactly 32x32. It is checked from the header (``im.size``) before any pixel
# is decoded; PIL's decompression-bomb check (``Image.MAX_IMAGE_PIXELS``) refuses absurd sizes inside ``Image.open``.
MAX_IMAGE_PIXELS = _SIZE[0] * _SIZE[1]
# Encoded bytes of one split kept in memory between hashing and decoding (a folder's images are read once for both).
# Beyond this (folders far larger than CIFAR's ~60 to 180 MB) the rest are read again on a miss and checked against
# their hashes, so memory stays bounded however large the folder is.
_HOLD_BYTES = 512 << 20

# Read-ahead of the archive reader: encoded images decoded together (see _read_archive).
_BATCH_BYTES = 8 << 20
_BATCH_IMAGES = 2048
_PIXEL_BYTES = _SIZE[0] * _SIZE[1] * 3

_WHY_BIG = "a 32x32 image is a few KB; larger files are decompression bombs or not 32x32 images"

# A decoded split: (images (N, 3, 32, 32) uint8, labels (N,) int64, class names, formats found such as "JPEG+PNG").
_Cached = tuple[np.ndarray, np.ndarray, list[str], str]
# One image to decode: (name for messages, label, bytes or the path to read them again from, sha256 of the bytes).
_Item = tuple[str, int, "bytes | Path", bytes]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _check_class_names(where: str, classes: list[str]) -> None:
    """Refuses a class name holding a control character (a newline, tab, ...): it would break every table and
    one-name-per-line file it is printed in. ``where`` names the folder (or archive path) holding the classes."""
    for name in classes:
        if any(unicodedata.category(c) == "Cc" for c in name):
            raise DataError(f"the class folder {name!r} in {where} has a control character in its name; rename it "
                            f"(class names are printed in tables, one per line)")


def _check_classes(where: str, split: str, classes: list[str], found: list[str]) -> None:
    if found != classes:
        raise DataError(f"{where}: {split}/ class folders differ from train/ (extra {sorted(set(found) - set(classes))}"
                        f", missing {sorted(set(classes) - set(found))}); both splits need the same class folders")


# ---- decoding ----------------------------------------------------------------------------------------------------


@contextmanager
def _bombs_are_errors() -> Iterator[None]:
    # PIL only warns between MAX_IMAGE_PIXELS and twice that; here any such header is refused like a larger one.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _decode_one(name: str, data: bytes) -> tuple[bytes, str]:
    """Decodes one encoded image to 32x32 RGB; returns its pixels as 3,072 bytes in (H, W, C) order, and its format
    (``"PNG"`` or ``"JPEG"``).

    Call inside :func:`_bombs_are_errors`.
    """
    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as im:
            if im.size != _SIZE:  # from the header: nothing is decoded yet
                raise DataError(f"{name} is {im.size[0]}x{im.size[1]} pixels; image folders must hold 32x32 "
                                f"images, resize it (or the whole folder) first")
            kind = "PNG" if im.format == "PNG" else "JPEG"
            if im.mode in _SIXTEEN_BIT:
                pixels = _sixteen_bit_to_rgb(name, im)
            else:
                pixels = (im if im.mode == "RGB" else im.convert("RGB")).tobytes()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"refusing {name}: its header declares more than {Image.MAX_IMAGE_PIXELS} pixels (PIL's "
                        f"decompression-bomb limit; the limit here is {MAX_IMAGE_PIXELS}, image folders hold "
                        f"{_SIZE[0]}x{_SIZE[1]} images), so it is not decoded; remove it") from e
    except Exception as e:  # PIL raises several types for unreadable files
        raise DataError(f"cannot decode image {name} ({type(e).__name__}: {e}); replace or remove it (PNG and JPEG "
                        f"files are read)") from e
    return pixels, kind


# PIL's modes for a 16-bit grayscale PNG ("I" in older versions); convert("RGB") clips them to 255 (white).
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _sixteen_bit_to_rgb(name: str, im: Image.Image) -> bytes:
    """A 16-bit grayscale image as 8-bit RGB pixels: each value's high byte (``v >> 8``), as PIL itself reduces a
    16-bit RGB PNG."""
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 0xFFFF):
        raise DataError(f"{name} holds {im.mode} pixels outside 0..65535 ({values.min()}..{values.max()}); convert "
                        f"it to an 8-bit RGB or grayscale PNG")
    gray = (values >> 8).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1).tobytes()


def _progress(total: int | None, desc: str):  # type: ignore[no-untyped-def]
    if sys.stderr.isatty() and (total is None or total > 5000):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img", leave=False)
    return None


def _decode(items: list[_Item]) -> tuple[np.ndarray, str]:
    """Decodes a folder split's images to (N, 3, 32, 32) uint8, converting any mode to RGB and rejecting other
    sizes; returns the pixels and the formats found (e.g. ``"JPEG"``, ``"JPEG+PNG"``, ``""`` for none)."""
    images = np.empty((len(items), 3, *_SIZE), dtype=np.uint8)
    kinds: set[str] = set()
    progress = _progress(len(items), "decoding images (cached afterwards)")
    try:
        with _bombs_are_errors():
            for i, (name, _, src, digest) in enumerate(items):
                if isinstance(src, Path):  # beyond the memory budget of the scan: read again, check it is the same
                    data = _read_image_file(src)
                    if hashlib.sha256(data).digest() != digest:
                        raise DataError(f"{name} changed while the folder was being loaded; run the command again "
                                        f"once nothing is writing to the folder")
                else:
                    data = src
                pixels, kind = _decode_one(name, data)
                # (H, W, C) as PIL gives it -> (C, H, W), image by image: no whole-split temporary copy.
                images[i] = np.frombuffer(pixels, dtype=np.uint8).reshape(*_SIZE, 3).transpose(2, 0, 1)
                kinds.add(kind)
                if progress is not None and i % 1000 == 999:
                    progress.update(1000)
    finally:
        if progress is not None:
            progress.close()
    return images, "+".join(sorted(kinds))


# ---- plain folders -----------------------------------------------------------------------------------------------


def find_folder(root: Path) -> Path:
    """Returns the folder holding ``train/``: ``root`` itself or its single subfolder that has one.

    Raises:
        DataError: If there is no such folder.
    """
    if (root / "train").is_dir():
        return root
    candidates = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / "train").is_dir()]
    if len(candidates) == 1:
        return candidates[0]
    raise DataError(f"no train/ folder in {root} (nor one level down); an image folder must hold {_LAYOUT}")


def _class_dirs(split_dir: Path) -> list[str]:
    names = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    _check_class_names(str(split_dir), names)
    return names


def _read_image_file(path: Path) -> bytes:
    """An image file's bytes, refused unread when its size is above ``MAX_IMAGE_BYTES``."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_IMAGE_BYTES:
                raise DataError(f"refusing {path}: it is {size} bytes, above the limit of {MAX_IMAGE_BYTES} bytes "
                                f"for one image ({_WHY_BIG}); remove it")
            data = f.read(size + 1)  # never more than the limit, even if the file grows meanwhile
    except OSError as e:
        raise DataError(f"cannot read image {path}: {os_error_text(e)}; make it readable (check its permissions) "
                        f"or remove it") from e
    if len(data) > MAX_IMAGE_BYTES:
        raise DataError(f"refusing {path}: it grew past the limit of {MAX_IMAGE_BYTES} bytes for one image while "
                        f"being read ({_WHY_BIG}); remove it")
    return data


def _scan_folder(folder: Path, split: str) -> tuple[list[str], list[_Item], str]:
    """Lists a split's images in order and reads them once; returns (classes, items, content key).

    The key hashes, per image, its path relative to ``folder`` and the sha256 of its bytes, so it changes with any
    added, removed, renamed or rewritten image and with nothing else (not the folder's name or place, not mtimes).
    """
    split_dir = folder / split
    if not split_dir.is_dir():
        raise DataError(f"image folder {folder} has no {split}/ folder; add {split}/<class>/*.png|jpg")
    classes = _class_dirs(folder / "train")
    if not classes:
        raise DataError(f"{folder / 'train'} has no class subfolders; an image folder must hold {_LAYOUT}")
    if split != "train":
        _check_classes(str(folder), split, classes, _class_dirs(split_dir))
    key = hashlib.sha256(f"folder-v{_CACHE_VERSION}|{split}\n".encode())
    items: list[_Item] = []
    held = 0
    for label, name in enumerate(classes):
        with os.scandir(split_dir / name) as it:
            entries = [e for e in it if _is_image(e.name) and e.is_file()]
        if not entries and split == "train":
            raise DataError(f"class folder {split_dir / name} holds no .png/.jpg/.jpeg images; add some or remove it")
        for e in sorted(entries, key=lambda e: natural_key(e.name)):
            data = _read_image_file(Path(e.path))
            digest = hashlib.sha256(data).digest()
            key.update(f"{name}/{e.name}|{len(data)}|".encode() + digest + b"\n")
            held += len(data)
            items.append((e.path, label, data if held <= _HOLD_BYTES else Path(e.path), digest))
    return classes, items, key.hexdigest()


# ---- archives ----------------------------------------------------------------------------------------------------


def _read_archive(archive: Path, splits: tuple[str, ...]) -> tuple[list[str], dict[str, _Cached]]:
    """Reads and decodes the given splits' images from an archive of an image folder (at the top or one directory
    down), in one pass, decoding each image as it is read.

    Returns:
        (class names, split -> ((N, 3, 32, 32) uint8 pixels in order, (N,) labels, class names, formats found)).
    """
    # (prefix, split, class) -> [[file name, index of its pixels in `store` (-1: a split not asked for), format]]
    found: dict[tuple[str, str, str], list[list]] = {}
    store = bytearray()  # decoded pixels, 3,072 bytes per image in reading order (one buffer: no per-image objects)
    # Images are decoded in batches of up to _BATCH_BYTES read ahead: alternating gzip and JPEG decoding image by
    # image was 15% slower (caches), and the batch bounds what is held.
    pending: list[tuple[list, str, bytes]] = []
    pending_bytes = 0
    progress = _progress(None, f"reading {archive.name} (decoded images are cached)")

    def flush() -> None:
        nonlocal pending_bytes
        for entry, name, data in pending:
            pixels, entry[2] = _decode_one(name, data)
            entry[1] = len(store) // _PIXEL_BYTES
            store.extend(pixels)
        if progress is not None:
            progress.update(len(pending))
        pending.clear()
        pending_bytes = 0

    try:
        with _bombs_are_errors():
            for m in iter_members(archive):
                parts = PurePosixPath(m.name).parts  # drops "." components, so "./x/train/..." works
                if m.kind == "dir" or not parts or not _is_image(parts[-1]):
                    continue
                if m.kind == "link":
                    raise DataError(f"{archive} holds the link {m.name} -> {m.target}; links are refused, an archive "
                                    f"of an image folder must hold the image files themselves (re-create it with "
                                    f"tar --dereference --hard-dereference, or zip without -y)")
                if m.kind != "file" or len(parts) not in (3, 4) or parts[-3] not in SPLITS:
                    continue
                prefix = parts[0] if len(parts) == 4 else ""
                entry = [parts[-1], -1, ""]
                if parts[-3] in splits:
                    data = m.read(archive, MAX_IMAGE_BYTES, _WHY_BIG)
                    pending.append((entry, f"{archive}:{m.name}", data))
                    pending_bytes += len(data)
                    if pending_bytes >= _BATCH_BYTES or len(pending) >= _BATCH_IMAGES:
                        flush()
                found.setdefault((prefix, parts[-3], parts[-2]), []).append(entry)
            flush()
    finally:
        if progress is not None:
            progress.close()
    prefixes = sorted({p for p, s, _ in found if s == "train"})
    if len(prefixes) != 1:
        raise DataError(f"{archive} holds {f'several image folders {prefixes}' if prefixes else 'no image folder'}"
                        f"; it must hold one folder with {_LAYOUT}, at the top or one level down")
    prefix = prefixes[0]
    classes = sorted(c for p, s, c in found if p == prefix and s == "train")
    for split in sorted({"train", *splits}):
        _check_class_names(f"{archive}:{prefix + '/' if prefix else ''}{split}",
                           sorted(c for p, s, c in found if p == prefix and s == split))
    out: dict[str, _Cached] = {}
    decoded = np.frombuffer(store, dtype=np.uint8).reshape(-1, *_SIZE, 3)  # (M, H, W, C)
    for split in splits:
        if split != "train":
            _check_classes(str(archive), split, classes, sorted(c for p, s, c in found if p == prefix and s == split))
        order: list[int] = []
        labels: list[int] = []
        kinds: set[str] = set()
        for label, cls in enumerate(classes):
            files = sorted(found.get((prefix, split, cls), []), key=lambda f: natural_key(f[0]))
            order += [index for _, index, _ in files]
            labels += [label] * len(files)
            kinds |= {kind for _, _, kind in files}
        # Gathered into file order and transposed to (N, C, H, W) a slice at a time: one whole temporary copy would
        # add 150 MB to the peak for CIFAR-10 (np.take(..., out=) makes one too).
        index = np.asarray(order, dtype=np.int64)
        images = np.empty((len(order), 3, *_SIZE), dtype=np.uint8)
        for start in range(0, len(order), 4096):
            images[start:start + 4096] = decoded[index[start:start + 4096]].transpose(0, 3, 1, 2)
        out[split] = (images, np.asarray(labels, dtype=np.int64), classes, "+".join(sorted(kinds)))
    return classes, out


# ---- the cache ---------------------------------------------------------------------------------------------------


def _note(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def _read_cache(path: Path, key: str, classes: list[str] | None = None, count: int | None = None) -> _Cached | None:
    """The cache entry at ``path`` if it exists and holds ``key``'s content; None otherwise.

    An entry that is unreadable, was written for other content, or whose arrays do not fit each other (or the
    expected class names and image count, when given) is reported in one line and not used; the caller rebuilds it.
    """
    try:
        if not path.is_file():
            return None
        # Opened here, not by np.load(path): np.load leaks its file handle when the file is not a valid .npz.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            version, stored = int(z["version"]), str(z["key"])
            if version != _CACHE_VERSION or stored != key:
                problem = f"it was written for other content (key {stored[:12]}, expected {key[:12]})"
            else:
                images, labels, kinds = z["images"], z["labels"], str(z["kinds"])
                names = [str(c) for c in z["classes"]]
                problem = _cache_problem(images, labels, names, classes, count)
    except OSError as e:
        problem = f"it cannot be read ({os_error_text(e)})"
    except Exception as e:  # damaged, truncated, not an .npz: rebuilt, never trusted
        problem = f"it is damaged or not a cache file ({type(e).__name__})"
    if problem:
        _note(f"ignoring the decoded-image cache {path}: {problem}; decoding the images again and rewriting it")
        return None
    return images, labels, names, kinds


def _cache_problem(images: np.ndarray, labels: np.ndarray, names: list[str], classes: list[str] | None,
                   count: int | None) -> str:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, *_SIZE):
        return f"its images are {images.dtype} {images.shape}, not (N, 3, 32, 32) uint8"
    if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
        return f"its labels are {labels.dtype} {labels.shape} for {images.shape[0]} images"
    if not names or (labels.size and (labels.min() < 0 or labels.max() >= len(names))):
        return f"its labels do not fit its {len(names)} class names"
    if classes is not None and names != classes:
        return "its class names differ from the folder's"
    if count is not None and images.shape[0] != count:
        return f"it holds {images.shape[0]} images, the folder {count}"
    return ""


def _write_cache(path: Path, key: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 kinds: str) -> None:
    """Writes a cache entry atomically (a temporary file renamed into place); a failure is a one-line warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, version=np.asarray(_CACHE_VERSION), key=np.asarray(key), images=images, labels=labels,
                         classes=np.asarray(classes, dtype=str), kinds=np.asarray(kinds))
            os.replace(tmp, path)  # readers see the old state or the whole new file, never a partial one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        _note(f"could not write the decoded-image cache {path} ({os_error_text(e)}); the next load will decode "
              f"again. Free space, or set RESSENET_CACHE or pass --cache-dir to a writable folder.")


# ---- loading -----------------------------------------------------------------------------------------------------


def load_imagefolder(root: Path, splits: tuple[str, ...], cache_dir: Path) -> dict[str, ImageDataset]:
    """Loads splits of an image folder, or of a .tar.gz/.tgz/.tar/.zip archive of one, via the pixel cache.

    Class names are the sorted subfolder names of ``train/`` (labels 0..K-1 in that order); files within a class
    are in natural name order (``2.png`` before ``10.png``). Splits missing from the cache of an archive are read in
    a single pass over it.

    Args:
        root: Folder holding ``train/`` and ``test/`` (or one level above it), or an archive of one.
        splits: Which of ``"train"``, ``"test"`` to load.
        cache_dir: Where decoded pixels are cached.

    Returns:
        split -> dataset.

    Raises:
        DataError: Missing, unreadable or malformed layout, class folders differing between splits, an unreadable
            image, one that is not 32x32, or one (or an archive member) above the size limits.
    """
    try:
        exists = root.exists()
        archive = exists and is_archive(root)
        folder_like = exists and not archive and root.is_dir()
    except OSError as e:
        raise _unreadable(root, e) from e
    if not exists:
        raise DataError(f"image folder {root} does not exist; pass --data-root pointing at a folder (or .tar.gz/.zip "
                        f"archive) holding {_LAYOUT}")
    # split -> (images, labels, classes, formats)
    loaded: dict[str, _Cached] = {}
    if archive:
        digest = file_digest(root, f"archive-v{_CACHE_VERSION}")
        keys = {split: hashlib.sha256(f"{digest}|{split}".encode()).hexdigest() for split in splits}
        files = {split: cache_dir / "imagefolder" / f"{archive_stem(root)}-{split}-{keys[split][:24]}.npz"
                 for split in splits}
        for split in splits:
            if (hit := _read_cache(files[split], keys[split])) is not None:
                loaded[split] = hit
        missing = tuple(split for split in splits if split not in loaded)
        if missing:
            _, decoded = _read_archive(root, missing)
            for split in missing:
                _write_cache(files[split], keys[split], *decoded[split])
                loaded[split] = decoded[split]
    elif folder_like:
        try:
            folder = find_folder(root)
            for split in splits:
                classes, items, key = _scan_folder(folder, split)
                cache_file = cache_dir / "imagefolder" / f"{folder.name}-{split}-{key[:24]}.npz"
                hit = _read_cache(cache_file, key, classes, len(items))
                if hit is None:
                    images, kinds = _decode(items)
                    labels = np.fromiter((label for _, label, _, _ in items), dtype=np.int64, count=len(items))
                    _write_cache(cache_file, key, images, labels, classes, kinds)
                    hit = (images, labels, classes, kinds)
                loaded[split] = hit
                del items  # the encoded bytes, before the next split is read
        except OSError as e:  # e.g. a folder without read permission
            raise _unreadable(root, e) from e
    else:
        raise DataError(f"{root} is neither a folder nor a .tar.gz/.tgz/.tar/.zip archive; pass --data-root pointing "
                        f"at a folder holding {_LAYOUT}")
    out = {}
    for split in splits:
        images, labels, classes, kinds = loaded[split]
        out[split] = ImageDataset(
            images=torch.from_numpy(images),
            labels=torch.from_numpy(labels),
            classes=classes,
            source="imagefolder",
            description=f"image folder {root} ({len(classes)} classes, {kinds or 'no images'}), {split} split",
            path=str(root),
            lossless="JPEG" not in kinds.split("+") if kinds else None,
        )
    return out


def _unreadable(root: Path, e: OSError) -> DataError:
    return unreadable_root("the image folder", root, e, "-R u+rX")
