"""Trained weights as a portable file: a ``.safetensors`` file whose header says what the weights are.

``ressenet export`` (ressenet/export.py) writes the file; ``ressenet.load_pretrained`` and ``create_model(name,
pretrained=...)`` (models/registry.py) read it back. Safetensors holds raw tensors and a JSON header, so nothing executes on load (no
pickle, unlike ``last.pt``). The header's ``ressenet`` entry (JSON) names the model, its options, the class count,
the input normalisation, the data and the accuracy; a file is checked against what the caller asked for before any
weight is copied. A URL is downloaded once into the cache (``$RESSENET_CACHE``/weights) and only kept when its
sha256 is the one given.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import torch

from ressenet.errors import RessenetError

__all__ = ["HEADER_KEY", "FORMAT_VERSION", "MODEL_OPTIONS", "sha256_file", "write_weights", "read_header",
           "fetch_weights", "cached_path", "check_expected", "read_tensors"]

HEADER_KEY = "ressenet"  # the safetensors metadata entry holding this package's JSON header
FORMAT_VERSION = 1
MODEL_OPTIONS = ("shortcut", "se_reduction", "layout")  # create_model options a weights file pins
_REQUIRED = ("format_version", "model", "options", "num_classes", "mean", "std")
_CHUNK = 1 << 20
_EXPORT_FIX = "export a run with `ressenet export RUN_DIR`"


def _need_safetensors() -> Any:
    try:
        import safetensors
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise RessenetError("reading and writing weights files needs the `safetensors` package, a dependency of "
                            "ressenet; install it with `pip install safetensors`") from None
    return safetensors


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_weights(path: str | Path, state_dict: dict[str, torch.Tensor], header: dict[str, Any]) -> str:
    """Atomically writes ``state_dict`` with ``header`` as a safetensors file; returns the file's sha256."""
    from ressenet.engine.checkpoint import atomic_write_bytes

    _need_safetensors()
    from safetensors.torch import save

    # Safetensors stores dense row-major tensors: a channels-last run's weights are made contiguous here.
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    data = save(tensors, metadata={"format": "pt", HEADER_KEY: json.dumps({"format_version": FORMAT_VERSION,
                                                                           **header}, sort_keys=True)})
    data = _sorted_header(data)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _sorted_header(data: bytes) -> bytes:
    """The same safetensors bytes with the JSON header's keys sorted. safetensors writes its metadata in hash-map
    order, which changes from process to process; sorted, one run exported twice has one sha256 (and one file name
    in weights/). The header keeps its length (space-padded, as safetensors pads it), so no offset moves."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = header.encode()
    if len(raw) > n:
        raise RuntimeError(f"a sorted safetensors header grew from {n} to {len(raw)} bytes; report this bug")
    return data[:8] + raw.ljust(n) + data[8 + n:]


def read_header(path: str | Path) -> dict[str, Any]:
    """The ``ressenet`` header of a weights file, plus ``tensors`` ({name: shape}); reads no tensor data.

    Raises:
        FileNotFoundError: no such file.
        RessenetError: not a safetensors file (e.g. a pickle), or one without a valid ressenet header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; {_EXPORT_FIX} or pass the right path")
    safetensors = _need_safetensors()
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # SafetensorError for a pickle, a truncated file, a bad header; OSError
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        hint = " (a last.pt checkpoint is evaluated with --checkpoint)" if path.suffix == ".pt" else ""
        raise RessenetError(f"{path} is not a safetensors weights file ({reason}){hint}; {_EXPORT_FIX}") from None
    if HEADER_KEY not in meta:
        raise RessenetError(f"{path} is a safetensors file without a ressenet header (it was not written by "
                            f"`ressenet export`); {_EXPORT_FIX}")
    try:
        header = json.loads(meta[HEADER_KEY])
    except ValueError as e:
        raise RessenetError(f"{path}: its ressenet header is not valid JSON ({e}); {_EXPORT_FIX} again") from None
    missing = [k for k in _REQUIRED if not isinstance(header, dict) or k not in header]
    if missing:
        raise RessenetError(f"{path}: its ressenet header lacks {', '.join(missing)}; {_EXPORT_FIX} again")
    if header["format_version"] != FORMAT_VERSION:
        raise RessenetError(f"{path} is in weights format {header['format_version']!r}, this ressenet reads format "
                            f"{FORMAT_VERSION}; upgrade ressenet or export the run again")
    bad = _bad_fields(header)
    if bad:
        raise RessenetError(f"{path}: its ressenet header has a malformed {', '.join(bad)}; the file was edited or "
                            f"damaged; {_EXPORT_FIX} again")
    return {**header, "tensors": shapes}


def _bad_fields(h: dict[str, Any]) -> list[str]:
    """The header fields whose type is wrong (a hand-edited or hostile header is refused, not half-used)."""
    def numbers(v: Any) -> bool:
        return (isinstance(v, list) and len(v) == 3
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))

    checks = {"model": isinstance(h["model"], str),
              "options": isinstance(h["options"], dict) and set(h["options"]) <= set(MODEL_OPTIONS),
              "num_classes": isinstance(h["num_classes"], int) and not isinstance(h["num_classes"], bool)
              and h["num_classes"] > 0,
              "mean": numbers(h["mean"]), "std": numbers(h["std"]) and all(x > 0 for x in h["std"]),
              "config": isinstance(h.get("config", {}), dict), "data": isinstance(h.get("data", {}), dict)}
    return [k for k, ok in checks.items() if not ok]


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https", "file")


def _weights_cache(cache_dir: str | Path | None) -> Path:
    from ressenet.data.constants import default_cache_dir

    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "weights"


def cached_path(name: str, sha256: str, cache_dir: str | Path | None = None) -> Path:
    """Where a download of the file ``name`` with this sha256 is kept: ``cache_dir/weights/<sha256[:16]>/name``."""
    return _weights_cache(cache_dir) / _check_hex(sha256)[:16] / name


def fetch_weights(source: str | os.PathLike[str], *, sha256: str | None = None, cache_dir: str | Path | None = None,
                  progress: bool | None = None) -> tuple[Path, str]:
    """(local path, sha256) of a weights file given by path or URL.

    A URL needs the file's sha256 (``sha256=``, or ``#sha256=HEX`` at the end of the URL; the model card lists it).
    It is downloaded once into ``cache_dir/weights`` (default: ``$RESSENET_CACHE``, else ``~/.cache/ressenet``)
    under a temporary name, and kept only when its sha256 matches. A local path is checked against ``sha256`` when
    one is given.
    """
    text = os.fspath(source)
    expected = sha256
    if _is_url(text):
        parts = urllib.parse.urlsplit(text)
        frag = urllib.parse.parse_qs(parts.fragment).get("sha256", [None])[0]
        if expected and frag and expected.lower() != frag.lower():
            raise RessenetError(f"sha256={expected} disagrees with the URL's #sha256={frag}; give one checksum")
        expected = expected or frag
        url = urllib.parse.urlunsplit(parts._replace(fragment=""))
        if not expected:
            raise RessenetError(f"downloading {url} needs the file's sha256, to check what arrives: pass sha256=HEX "
                                f"or append #sha256=HEX to the URL (the file's model card lists it)")
        expected = _check_hex(expected)
        name = Path(urllib.parse.unquote(parts.path)).name or "weights.safetensors"
        dest = cached_path(name, expected, cache_dir)
        if dest.is_file():
            got = sha256_file(dest)
            if got != expected:
                raise RessenetError(f"the cached copy {dest} has sha256 {got}, not {expected}: it was damaged; "
                                    f"delete it to download {url} again")
            return dest, got
        return dest, _download(url, dest, expected, sys.stderr.isatty() if progress is None else progress)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; {_EXPORT_FIX}, or pass a URL")
    got = sha256_file(path)
    if expected and got != _check_hex(expected):
        raise RessenetError(f"{path} has sha256 {got}, not the {expected} asked for; it is another or a damaged "
                            f"file")
    return path, got


def _check_hex(digest: str) -> str:
    d = digest.strip().lower()
    if len(d) != 64 or any(c not in "0123456789abcdef" for c in d):
        raise RessenetError(f"sha256 {digest!r} is not 64 hexadecimal digits; copy it from the file's model card")
    return d


def _download(url: str, dest: Path, expected: str, progress: bool) -> str:
    """Downloads ``url`` to a temporary name beside ``dest``; renames it to ``dest`` only when its sha256 is
    ``expected`` (a bad file is deleted, never cached)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
    except OSError as e:
        raise RessenetError(f"cannot write to the weights cache {dest.parent}: {e.strerror or e}; set "
                            f"$RESSENET_CACHE (or cache_dir=) to a writable folder") from None
    tmp = Path(tmp_name)
    try:
        try:
            torch.hub.download_url_to_file(url, str(tmp), progress=progress)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise RessenetError(f"cannot download {url}: {reason}; check the URL and the network") from None
        got = sha256_file(tmp)
        if got != expected:
            raise RessenetError(f"{url} arrived with sha256 {got}, not {expected}; it was not cached: check the URL "
                                f"and the checksum (the model card lists it)")
        os.replace(tmp, dest)
        return got
    finally:
        tmp.unlink(missing_ok=True)


def check_expected(header: dict[str, Any], where: str | Path, name: str | None, **options: Any) -> None:
    """Refuses, in one line, a file whose header is for another model, other options or another class count
    than asked (``None`` options: the file's)."""
    diffs = []
    if name is not None and name != header["model"]:
        diffs.append(f"model {header['model']!r}, not {name!r}")
    for key, want in options.items():
        if want is None:
            continue
        if key == "num_classes":
            have = header["num_classes"]
        elif key in MODEL_OPTIONS:
            have = header["options"].get(key)
            want = want.upper() if key == "shortcut" and isinstance(want, str) else want
        else:
            raise ValueError(f"unknown option {key!r} for a pretrained model; valid: num_classes, "
                             f"{', '.join(MODEL_OPTIONS)}")
        if want != have:
            diffs.append(f"{key}={have!r}, not {want!r}")
    if diffs:
        fix = "; to change the class count, load it and call model.reset_classifier(N)" if any(
            d.startswith("num_classes") for d in diffs) else ""
        raise RessenetError(f"{where} holds weights for {'; '.join(diffs)}: refused (no weight was copied); "
                            f"ressenet.load_pretrained({str(where)!r}) builds the model it is for{fix}")


def read_tensors(path: str | Path, header: dict[str, Any], expected: dict[str, tuple[int, ...]],
                 model_name: str) -> dict[str, torch.Tensor]:
    """The file's tensors (on the CPU), once their names and shapes (``read_header``'s ``tensors``) are checked
    against ``expected``, a model's state-dict shapes: a mismatch is one line and nothing is read."""
    if expected != header["tensors"]:
        missing = sorted(set(expected) - set(header["tensors"]))
        extra = sorted(set(header["tensors"]) - set(expected))
        shape = sorted(k for k in set(expected) & set(header["tensors"]) if expected[k] != header["tensors"][k])
        what = "; ".join(f"{label} {', '.join(keys[:3])}" for label, keys in
                         (("missing", missing), ("unexpected", extra), ("other shapes of", shape)) if keys)
        raise RessenetError(f"{path}: its tensors do not fit {model_name} ({what}); the file is damaged or was "
                            f"edited; {_EXPORT_FIX} again")
    from safetensors.torch import load_file

    return load_file(str(path))
