"""Verified download: success from file:// and http://, and every failure leaves nothing that later loads."""
from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from cifar_fakes import make_cifar_archive

from ressenet.data import DataError, download, load_split
from ressenet.data.constants import ARCHIVES, URL_BASE_ENV


def assert_nothing_left(root: Path, name: str = "cifar10") -> None:
    """Neither a dataset folder nor temporaries remain (nor the root the download created), and loading says
    nothing was found."""
    assert not root.exists()
    with pytest.raises(DataError, match="no CIFAR"):
        load_split(name, "train", root)


@contextmanager
def serve(directory: Path, truncate_at: int | None = None) -> Iterator[str]:
    """Serves ``directory`` over HTTP on localhost; with ``truncate_at``, every response stops after that many
    bytes while announcing the full length (a dropped connection)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def copyfile(self, source, outputfile):
            if truncate_at is None:
                return super().copyfile(source, outputfile)
            outputfile.write(source.read(truncate_at))
            outputfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_from_file_url_verifies_and_unpacks(tmp_path, name):
    archive, md5, fake = make_cifar_archive(tmp_path / "remote", name)
    root = tmp_path / "data"
    folder = download(name, root, url=archive.as_uri(), md5=md5, member_md5=fake.member_md5, progress=False)
    assert folder == root / ARCHIVES[(name, "python")].folder
    assert sorted(p.name for p in root.iterdir()) == [folder.name]  # no archive or temporaries left
    ds = load_split(name, "train", root)
    assert np.array_equal(ds.images.numpy(), fake.train_images)
    # A second call finds the folder and does not fetch again.
    assert download(name, root, url="file:///nonexistent", progress=False) == folder


def test_load_split_download_uses_url_base_env(tmp_path, monkeypatch):
    archive, md5, fake = make_cifar_archive(tmp_path / "remote", "cifar10", images="index")
    spec = ARCHIVES[("cifar10", "python")]
    monkeypatch.setitem(ARCHIVES, ("cifar10", "python"), spec.__class__(
        **{**spec.__dict__, "md5": md5, "members": fake.member_md5}))
    monkeypatch.setenv(URL_BASE_ENV, (tmp_path / "remote").as_uri())
    root = tmp_path / "data"
    with pytest.raises(DataError, match="--download"):
        load_split("cifar10", "test", root)
    ds = load_split("cifar10", "test", root, download=True)
    assert np.array_equal(ds.labels.numpy(), fake.test_labels)


def test_download_over_http(tmp_path):
    archive, md5, fake = make_cifar_archive(tmp_path / "remote", "cifar100", variant="binary")
    with serve(archive.parent) as base:
        folder = download("cifar100", tmp_path / "data", url=f"{base}/{archive.name}", variant="binary", md5=md5,
                          progress=False)
    assert folder.name == "cifar-100-binary"
    assert len(load_split("cifar100", "test", tmp_path / "data")) == 20


def test_bad_archive_md5(tmp_path):
    archive, md5, fake = make_cifar_archive(tmp_path / "remote", "cifar10")
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:  # the official md5 cannot match a fake archive
        download("cifar10", root, url=archive.as_uri(), progress=False)
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg and md5 in msg and ARCHIVES[("cifar10", "python")].md5 in msg
    assert_nothing_left(root)


def test_bad_member_md5(tmp_path):
    archive, md5, fake = make_cifar_archive(tmp_path / "remote", "cifar10")
    wrong = {**fake.member_md5, "data_batch_2": "0" * 32}
    root = tmp_path / "data"
    with pytest.raises(DataError, match="data_batch_2 .* has md5"):
        download("cifar10", root, url=archive.as_uri(), md5=md5, member_md5=wrong, progress=False)
    assert_nothing_left(root)


def test_missing_member(tmp_path):
    archive, md5, fake = make_cifar_archive(tmp_path / "remote", "cifar100")
    # Rebuild the archive without "meta".
    (fake.folder / "meta").unlink()
    import tarfile

    with tarfile.open(archive, "w:gz") as tf:
        tf.add(fake.folder, arcname="cifar-100-python")
    from ressenet.files import file_hash

    root = tmp_path / "data"
    with pytest.raises(DataError, match="lacks the member cifar-100-python/meta"):
        download("cifar100", root, url=archive.as_uri(), md5=file_hash(archive, "md5"), member_md5=fake.member_md5,
                 progress=False)
    assert_nothing_left(root, "cifar100")


def test_interrupted_download(tmp_path):
    archive, md5, fake = make_cifar_archive(tmp_path / "remote", "cifar10")
    root = tmp_path / "data"
    with serve(archive.parent, truncate_at=archive.stat().st_size // 2) as base:
        with pytest.raises(DataError, match="interrupted"):
            download("cifar10", root, url=f"{base}/{archive.name}", md5=md5, member_md5=fake.member_md5,
                     progress=False)
    assert_nothing_left(root)


def test_offline(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DataError, match="download of .* failed") as e:
        download("cifar10", root, url="http://127.0.0.1:9/cifar-10-python.tar.gz", progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="failed"):
        download("cifar10", root, url=(tmp_path / "missing.tar.gz").as_uri(), progress=False)
    assert_nothing_left(root)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="cifar10 and cifar100"):
        download("imagefolder", tmp_path)
