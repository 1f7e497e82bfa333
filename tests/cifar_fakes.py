"""Small datasets written in the official CIFAR formats (and as image folders), for tests.

There is no CIFAR-100 copy on the development machines and the CIFAR-10 stand-ins are partial, so the readers are
tested against files this module writes byte-for-byte in the official layouts:

* python variant: Python-2 pickles, as the CIFAR page ships them: protocol 2, byte strings written as Python-2
  ``str`` (BINSTRING opcodes, not Python 3's ``_codecs.encode`` calls), arrays reduced through
  ``numpy.core.multiarray._reconstruct``;
* binary variant: fixed-size records, label byte(s) then the red, green and blue 32x32 planes.

Every writer returns the pixels and labels it wrote, so tests compare what is read with what was written. Pixels can
encode the image's index (see :func:`index_images`), which lets loader tests check that labels stay with images.

Usage from tests (``tests/`` is on ``sys.path`` under pytest)::

    from cifar_fakes import write_cifar, make_cifar_archive, write_image_folder
"""
from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ressenet.data.constants import ARCHIVES, CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES


@dataclass
class FakeCifar:
    """What a writer put on disk.

    Attributes:
        name: ``"cifar10"`` or ``"cifar100"``.
        variant: ``"python"`` or ``"binary"``.
        folder: The official-named folder written (e.g. ``root/cifar-10-batches-py``).
        train_images: (N, 3, 32, 32) uint8, in file order.
        train_labels: (N,) int64 (fine labels for CIFAR-100).
        test_images: (M, 3, 32, 32) uint8.
        test_labels: (M,) int64.
        classes: Class names written to the meta file.
        train_coarse: CIFAR-100 coarse labels of the train split, else None.
        test_coarse: CIFAR-100 coarse labels of the test split, else None.
        coarse_classes: CIFAR-100 superclass names, else None.
        member_md5: Member file name (relative to ``folder``) -> md5, for ``download(member_md5=...)``.
    """

    name: str
    variant: str
    folder: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    train_coarse: np.ndarray | None = None
    test_coarse: np.ndarray | None = None
    coarse_classes: list[str] | None = None
    member_md5: dict[str, str] = field(default_factory=dict)


def random_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3, 32, 32) uint8 noise."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def index_images(n: int) -> np.ndarray:
    """(n, 3, 32, 32) uint8 images that encode their own index and every pixel's position.

    Channel 0 holds ``index % 251 + 1`` everywhere (never 0, so padding is told apart), channel 1 the row + 1,
    channel 2 the column + 1 (1..32). A crop's offset and flip can be read back from channels 1 and 2, and the image
    it came from from channel 0 (for n <= 251).
    """
    img = np.empty((n, 3, 32, 32), dtype=np.uint8)
    img[:, 0] = (np.arange(n) % 251 + 1)[:, None, None]
    img[:, 1] = (np.arange(32) + 1)[None, :, None]
    img[:, 2] = (np.arange(32) + 1)[None, None, :]
    return img


# ---- Python-2 style pickles --------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc]  # the pure-Python pickler, whose dispatch table we extend
    """Writes pickles as Python 2's cPickle did for the CIFAR files: byte strings as Python-2 ``str``."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def __init__(self, file: io.BytesIO, numpy_module: str) -> None:
        super().__init__(file, protocol=2)
        self.numpy_module = numpy_module

    def _save_py2_str(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if getattr(obj, "__name__", None) == "_reconstruct":
            # numpy 2 would write numpy._core.multiarray; the official files say numpy.core.multiarray.
            self.write(pickle.GLOBAL + f"{self.numpy_module}\n_reconstruct\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj: Any, numpy_module: str = "numpy.core.multiarray") -> bytes:
    """Pickles ``obj`` the way the official CIFAR python files were pickled."""
    buf = io.BytesIO()
    _Py2Pickler(buf, numpy_module).dump(obj)
    return buf.getvalue()


def malicious_pickle(marker: Path) -> bytes:
    """A pickle that, loaded with plain ``pickle.load``, runs ``os.system("touch <marker>")``."""

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return os.system, (f"touch {marker}",)

    return pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2)


# ---- writers -----------------------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar(root: str | Path, name: str = "cifar10", variant: str = "python", *, train_size: int = 40,
                test_size: int = 20, seed: int = 0, images: str = "random",
                numpy_module: str = "numpy.core.multiarray") -> FakeCifar:
    """Writes a small CIFAR-10/100 in an official layout under ``root``.

    Args:
        root: Data root; the official folder (e.g. ``cifar-10-batches-py``) is created in it.
        name: ``"cifar10"`` or ``"cifar100"``.
        variant: ``"python"`` or ``"binary"``.
        train_size: Training images; for CIFAR-10 split over the five batch files (must be a multiple of 5).
        test_size: Test images.
        seed: Seed of pixels and labels.
        images: ``"random"`` noise or ``"index"`` (see :func:`index_images`; train then test numbering).
        numpy_module: Module named for ``_reconstruct`` in pickles (the official files: ``numpy.core.multiarray``).

    Returns:
        What was written.
    """
    spec = ARCHIVES[(name, variant)]
    folder = Path(root) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    n = train_size + test_size
    pixels = index_images(n) if images == "index" else random_images(n, seed)
    classes = list(CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES)
    fine = rng.integers(0, len(classes), size=n).astype(np.int64)
    coarse = fine % len(CIFAR100_COARSE_CLASSES) if name == "cifar100" else None
    fake = FakeCifar(
        name=name, variant=variant, folder=folder,
        train_images=pixels[:train_size], train_labels=fine[:train_size],
        test_images=pixels[train_size:], test_labels=fine[train_size:], classes=classes,
        train_coarse=None if coarse is None else coarse[:train_size],
        test_coarse=None if coarse is None else coarse[train_size:],
        coarse_classes=None if coarse is None else list(CIFAR100_COARSE_CLASSES),
    )
    if name == "cifar10":
        if train_size % len(spec.train_files):
            raise ValueError(f"train_size must be a multiple of {len(spec.train_files)} for cifar10")
        per = train_size // len(spec.train_files)
        chunks = [(f, slice(i * per, (i + 1) * per)) for i, f in enumerate(spec.train_files)]
        chunks.append((spec.test_files[0], slice(train_size, n)))
        for fname, sl in chunks:
            imgs, labs = pixels[sl], fine[sl]
            if variant == "python":
                obj = {"batch_label": f"fake batch {fname}", "labels": [int(v) for v in labs],
                       "data": imgs.reshape(len(imgs), -1), "filenames": [f"img_{i}.png" for i in range(len(imgs))]}
                (folder / fname).write_bytes(py2_pickle(obj, numpy_module))
            else:
                rec = np.concatenate([labs.astype(np.uint8)[:, None], imgs.reshape(len(imgs), -1)], axis=1)
                (folder / fname).write_bytes(rec.tobytes())
        if variant == "python":
            meta = {"num_cases_per_batch": per, "label_names": classes, "num_vis": 3072}
            (folder / "batches.meta").write_bytes(py2_pickle(meta, numpy_module))
        else:
            (folder / "batches.meta.txt").write_text("\n".join(classes) + "\n\n")
    else:
        assert coarse is not None
        for fname, sl in ((spec.train_files[0], slice(0, train_size)), (spec.test_files[0], slice(train_size, n))):
            imgs = pixels[sl]
            if variant == "python":
                obj = {"filenames": [f"img_{i}.png" for i in range(len(imgs))], "batch_label": f"fake {fname}",
                       "fine_labels": [int(v) for v in fine[sl]], "coarse_labels": [int(v) for v in coarse[sl]],
                       "data": imgs.reshape(len(imgs), -1)}
                (folder / fname).write_bytes(py2_pickle(obj, numpy_module))
            else:
                rec = np.concatenate([coarse[sl].astype(np.uint8)[:, None], fine[sl].astype(np.uint8)[:, None],
                                      imgs.reshape(len(imgs), -1)], axis=1)
                (folder / fname).write_bytes(rec.tobytes())
        if variant == "python":
            meta = {"fine_label_names": classes, "coarse_label_names": list(CIFAR100_COARSE_CLASSES)}
            (folder / "meta").write_bytes(py2_pickle(meta, numpy_module))
        else:
            (folder / "fine_label_names.txt").write_text("\n".join(classes) + "\n")
            (folder / "coarse_label_names.txt").write_text("\n".join(CIFAR100_COARSE_CLASSES) + "\n")
    fake.member_md5 = {m: _md5(folder / m) for m in spec.members}
    return fake


def make_cifar_archive(dest: str | Path, name: str = "cifar10", variant: str = "python",
                       **kwargs: Any) -> tuple[Path, str, FakeCifar]:
    """Writes a fake official archive (e.g. ``dest/cifar-10-python.tar.gz``) as the CIFAR page lays it out.

    Args:
        dest: Folder to write the archive in (a scratch ``dest/_src`` folder holds its contents).
        name: ``"cifar10"`` or ``"cifar100"``.
        variant: ``"python"`` or ``"binary"``.
        **kwargs: Passed to :func:`write_cifar`.

    Returns:
        (archive path, archive md5, what it holds; ``fake.member_md5`` for ``download(member_md5=...)``).
    """
    dest = Path(dest)
    fake = write_cifar(dest / "_src", name, variant, **kwargs)
    spec = ARCHIVES[(name, variant)]
    archive = dest / spec.filename
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(fake.folder, arcname=spec.folder)
    return archive, _md5(archive), fake


def write_image_folder(root: str | Path, *, classes: tuple[str, ...] = ("cat", "dog", "frog"),
                       train_per_class: int = 4, test_per_class: int = 2, ext: str = ".png", seed: int = 0,
                       mode: str = "RGB") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes ``root/{train,test}/<class>/<i>.<ext>`` with random 32x32 images, numbered 1, 2, ..., 10, 11 ...

    PNG is lossless, so the returned pixels are exactly what a reader must decode (for ``mode="RGB"``).

    Returns:
        split -> (images (N, 3, 32, 32) uint8, labels (N,)) in the order a reader must return them (class by
        class in sorted class order, files in numeric order).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    out = {}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        imgs, labs = [], []
        for label, cls in enumerate(sorted(classes)):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(1, per + 1):
                px = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(px).convert(mode).save(d / f"{i}{ext}")
                imgs.append(px.transpose(2, 0, 1))
                labs.append(label)
        out[split] = (np.stack(imgs), np.asarray(labs, dtype=np.int64))
    return out
