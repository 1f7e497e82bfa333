"""Trained weights as a portable file: a ``.safetensors`` file whose header says what the weights are.

``ressenet export`` (experiments/export.py) writes the file; ``ressenet.load_pretrained`` and
``create_model(name, pretrained=...)`` (models/registry.py) read it back. Safetensors holds raw tensors and a JSON
header, so nothing executes on load (no pickle, unlike ``last.pt``). The header's ``ressenet`` entry (JSON) names
the model, its options, the class count, the input normalisation, the data and the accuracy; a file is checked
against what the caller asked for before any weight is copied. A URL is downloaded once into the cache
(``$RESSENET_CACHE``/weights) and only kept when its sha256 is the one given.
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

from ressenet.errors import RessenetError, quote
from ressenet.files import atomic_write_bytes, default_cache_dir, finite, sha256_file

__all__ = ["HEADER_KEY", "FORMAT_VERSION", "MODEL_OPTIONS", "sha256_file", "write_weights", "read_header",
           "fetch_weights", "cached_path", "check_expected", "read_tensors"]

HEADER_KEY = "ressenet"  # the safetensors metadata entry holding this package's JSON header
FORMAT_VERSION = 1
MODEL_OPTIONS = ("shortcut", "se_reduction", "layout")  # create_model options a weights file pins
_REQUIRED = ("format_version", "model", "options", "num_classes", "mean", "std")
_EXPORT_FIX = "export a run with `ressenet export RUN_DIR`"


def _need_safetensors() -> Any:
    try:
        import safetensors
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise RessenetError("reading and writing weights files needs the `safetensors` package, a dependency of "
                            "ressenet; install it with `pip install safetensors`") from None
    return safetensors


def write_weights(path: str | Path, state_dict: dict[str, torch.Tensor], header: dict[str, Any]) -> str:
    """Atomically writes ``state_dict`` with ``header`` as a safetensors file; returns the file's sha256."""
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
    if path.is_dir():
        raise RessenetError(f"{path} is a folder; pass the .safetensors file inside it (`ressenet export RUN_DIR` "
                            f"writes RUN_DIR/<run name>.safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; {_EXPORT_FIX} or pass the right path")
    safetensors = _need_safetensors()
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: str(f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as e:  # SafetensorError for a pickle, a truncated file, a bad header; OSError
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        hint = " (a last.pt checkpoint is evaluated with --checkpoint)" if path.suffix == ".pt" else ""
        raise RessenetError(f"{path} is not a safetensors weights file ({reason}){hint}; {_EXPORT_FIX}") from None
    if HEADER_KEY not in meta:
        raise RessenetError(f"{path} is a safetensors file without a ressenet header (it was not written by "
                            f"`ressenet export`); {_EXPORT_FIX}")
    try:
        header = json.loads(meta[HEADER_KEY])
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise RessenetError(f"{path}: its ressenet header is not valid JSON ({why}); {_EXPORT_FIX} again") from None
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
    # The class count must be the head's before anything is built from it: a header saying 1e8 classes over a
    # 10-class head would otherwise allocate a 25 GB layer just to find the shapes differ.
    if shapes.get("fc.weight", (None,))[0] != header["num_classes"]:
        raise RessenetError(f"{path}: its header says {header['num_classes']} classes but its fc.weight has shape "
                            f"{list(shapes.get('fc.weight', ()))}; the file was edited or damaged; {_EXPORT_FIX} again")
    odd = sorted(k for k, t in dtypes.items() if t != _STORED_DTYPES.get(k.rsplit(".", 1)[-1], "F32"))
    if odd:
        raise RessenetError(f"{path}: tensor {odd[0]} is stored as {dtypes[odd[0]]}, not "
                            f"{_STORED_DTYPES.get(odd[0].rsplit('.', 1)[-1], 'F32')} as `ressenet export` writes it; "
                            f"the file was edited or damaged; {_EXPORT_FIX} again")
    return {**header, "tensors": shapes}


# The dtype `ressenet export` stores each tensor in, by the last part of its name (the rest are float32).
_STORED_DTYPES = {"num_batches_tracked": "I64"}


def _int_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _three(v: Any, low: float = -1e6) -> bool:
    """Three finite numbers between ``low`` and 1e6: one per RGB channel."""
    return isinstance(v, list) and len(v) == 3 and all(finite(x) and low <= x <= 1e6 for x in v)


def normalization_problem(mean: Any, std: Any) -> str | None:
    """Why ``mean``/``std`` cannot normalise an RGB input (the one rule of the exporter and the loader), or None.

    Three finite numbers each; every std between 1e-6 and 1e6 (a std of 1e-300 or NaN makes every logit NaN).
    """
    if not _three(mean):
        return f"mean {quote(mean)} is not three finite numbers (one per RGB channel)"
    if not _three(std, 1e-6):
        return f"std {quote(std)} is not three numbers between 1e-6 and 1e6 (one per RGB channel)"
    return None


def _bad_fields(h: dict[str, Any]) -> list[str]:
    """The header fields whose type is wrong (a hand-edited or hostile header is refused, not half-used)."""
    checks = {"model": isinstance(h["model"], str),
              "options": isinstance(h["options"], dict) and set(h["options"]) <= set(MODEL_OPTIONS),
              "num_classes": isinstance(h["num_classes"], int) and not isinstance(h["num_classes"], bool)
              and h["num_classes"] > 0,
              "mean": _three(h["mean"]), "std": _three(h["std"], 1e-6),  # one rule: normalization_problem
              "config": isinstance(h.get("config", {}), dict), "data": isinstance(h.get("data", {}), dict),
              "trained_with": isinstance(h.get("trained_with", {}), dict),
              # an option the model builder would take in another type (se_reduction: true is not 1)
              "options.se_reduction": isinstance(h["options"], dict) and _int_or_none(h["options"].get("se_reduction")),
              "options.shortcut/layout": isinstance(h["options"], dict) and all(
                  isinstance(h["options"].get(k), (str, type(None))) for k in ("shortcut", "layout"))}
    return [k for k, ok in checks.items() if not ok]


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https", "file")


def _weights_cache(cache_dir: str | Path | None) -> Path:
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
        name = Path(urllib.parse.unquote(parts.path)).name
        if name in ("", ".", "..") or len(name.encode()) > 200:  # a cache file name must be one short component
            name = "weights.safetensors"
        dest = cached_path(name, expected, cache_dir)
        if dest.is_file():
            got = sha256_file(dest)
            if got != expected:
                raise RessenetError(f"the cached copy {dest} has sha256 {got}, not {expected}: it was damaged; "
                                    f"delete it to download {url} again")
            return dest, got
        return dest, _download(url, dest, expected, sys.stderr.isatty() if progress is None else progress)
    path = Path(text)
    if path.is_dir():
        read_header(path)  # one line saying it is a folder
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


# Seconds to connect and for each read: a server that sends headers and stalls is an error, not a hang.
DOWNLOAD_TIMEOUT = 60.0
# A temporary download file untouched this long belongs to a killed process (a live one writes every read).
STALE_PART_SECONDS = 3600


def _fetch_url(url: str, dest: Path, progress: bool) -> None:
    """``url``'s bytes into ``dest``, with :data:`DOWNLOAD_TIMEOUT` on the connection and on every read."""
    import urllib.request

    from tqdm import tqdm

    headers = {"User-Agent": "ressenet"}
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:  # user:password@host: sent as HTTP basic authentication, not as a host name
        import base64

        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        url = _shown_url(url)
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as resp, dest.open("wb") as f:
        total = resp.headers.get("Content-Length")
        with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                  disable=not progress) as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def _remove_stale_parts(dest: Path) -> None:
    """Removes the temporary files of downloads of ``dest`` that were killed (SIGKILL leaves them)."""
    import time

    for part in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if time.time() - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
        except OSError:
            pass  # another process removed it, or it is not ours to remove


def _shown_url(url: str) -> str:
    """``url`` without the user name and password it may carry (error messages end up in logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


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
    _remove_stale_parts(dest)
    try:
        try:
            _fetch_url(url, tmp, progress)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError):
                reason = f"no data for {DOWNLOAD_TIMEOUT:g} s"
            raise RessenetError(f"cannot download {_shown_url(url)}: {reason}; check the URL and the network") \
                from None
        got = sha256_file(tmp)
        if got != expected:
            raise RessenetError(f"{_shown_url(url)} arrived with sha256 {got}, not {expected}; it was not cached: "
                                f"check the URL and the checksum (the model card lists it)")
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

    tensors = load_file(str(path))
    for name, t in tensors.items():
        # Non-finite weights or a negative BatchNorm variance give NaN logits: refuse them before any use.
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RessenetError(f"{path}: tensor {name} holds NaN or infinite values; {_EXPORT_FIX} again")
        if name.endswith("running_var") and bool((t < 0).any()):
            raise RessenetError(f"{path}: tensor {name} holds a negative variance; {_EXPORT_FIX} again")
    return tensors
