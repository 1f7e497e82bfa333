"""Weights this project trained, by name: ``ressenet.create_model("res_se_net20", pretrained=True)``.

The manifest (``pretrained.json`` beside this module, read and checked by :func:`manifest`) has one row per published
weights file: model, tag, file name, sha256, and meta in torchvision's shape (accuracy with its data label and
schedule, recipe, parameters, multiply-accumulates, classes, mean, std, input size, precision, licence). The files
are ``ressenet export`` safetensors named ``<model>-<first 8 hex digits of their sha256>.safetensors``, kept in the
repository's ``weights/`` folder. A file is looked for in that folder when the package runs from a checkout, then in
the download cache, then downloaded from ``$RESSENET_WEIGHTS_URL`` (a base URL); its sha256 is checked against the
manifest before any weight is read. :func:`transforms` gives the evaluation preprocessing that goes with them.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ressenet.errors import RessenetError
from ressenet.weights import cached_path, fetch_weights, sha256_file

__all__ = ["MANIFEST", "WEIGHTS_DIR", "URL_ENV", "Weights", "EvalTransform", "manifest", "list_pretrained",
           "get_weights", "is_tag", "weights_path", "pretrained_cfg", "transforms", "hashed_name"]

MANIFEST = Path(__file__).resolve().with_name("pretrained.json")
WEIGHTS_DIR = "weights"  # the repository-root folder that holds the published files
URL_ENV = "RESSENET_WEIGHTS_URL"
_TAG = re.compile(r"[a-z0-9][a-z0-9-]*")
_HEX = re.compile(r"[0-9a-f]{64}")
_META = {"test_top1": float, "test_top5": float, "data_label": str, "schedule": str, "seed": int, "recipe": dict,
         "params": int, "macs": int, "num_classes": int, "classes": list, "mean": list, "std": list,
         "input_size": list, "precision": str, "licence": str, "run": str, "run_test_top1": float,
         "trained_with": dict, "measured_with": dict}
_ROW_FIX = "`ressenet export RUN_DIR --out weights/ --tag TAG` prints a valid one"


@dataclass(frozen=True)
class Weights:
    """One published weights file (a manifest row), as torchvision's ``WeightsEnum`` members: ``.meta`` holds the
    facts, ``.transforms()`` the preprocessing."""

    model: str
    tag: str
    default: bool
    file: str
    sha256: str
    size: int
    meta: dict[str, Any]

    @property
    def label(self) -> str:
        """What the accuracy was measured on and how the weights were trained, e.g. "CIFAR-10 (JPEG copy), paper
        protocol compressed 8x, seed 0"."""
        return f"{self.meta['data_label']}, {self.meta['schedule']}, seed {self.meta['seed']}"

    def transforms(self) -> EvalTransform:
        """The evaluation preprocessing these weights expect."""
        return EvalTransform(self.meta["mean"], self.meta["std"], self.meta["input_size"])


def hashed_name(model: str, sha256: str) -> str:
    """The published file name of a weights file: ``<model>-<first 8 hex of its sha256>.safetensors``."""
    return f"{model}-{sha256[:8]}.safetensors"


def _row(i: int, raw: Any, where: Path) -> Weights:
    """A manifest row, checked; a bad one is one line naming the row and the field."""
    name = raw.get("model") if isinstance(raw, dict) else None

    def bad(problem: str) -> RessenetError:
        return RessenetError(f"{where}: row {i} ({name or 'no model'}) {problem}; fix the row ({_ROW_FIX})")

    if not isinstance(raw, dict):
        raise bad("is not an object")
    want = {"model": str, "tag": str, "default": bool, "file": str, "sha256": str, "size": int, "meta": dict}
    for key, typ in want.items():
        if not isinstance(raw.get(key), typ) or (typ is int and isinstance(raw.get(key), bool)):
            raise bad(f"has no {key} of type {typ.__name__}")
    if set(raw) - set(want):
        raise bad(f"has unknown field(s) {', '.join(sorted(set(raw) - set(want)))}")
    if not _TAG.fullmatch(raw["tag"]):
        raise bad(f"has tag {raw['tag']!r}: lower-case letters, digits and '-' only")
    if not _HEX.fullmatch(raw["sha256"]):
        raise bad("has a sha256 that is not 64 lower-case hexadecimal digits")
    if raw["file"] != hashed_name(raw["model"], raw["sha256"]):
        raise bad(f"names file {raw['file']!r}, not {hashed_name(raw['model'], raw['sha256'])!r} (model and the "
                  f"first 8 hex digits of the sha256)")
    meta = raw["meta"]
    for key, typ in _META.items():
        ok = isinstance(meta.get(key), (int, float) if typ is float else typ) and not isinstance(meta.get(key), bool)
        if not ok:
            raise bad(f"has no meta.{key} of type {typ.__name__}")
    unfilled = [f"meta.{k}.{f}" for k in ("trained_with", "measured_with") for f in ("torch", "cpu")
                if not isinstance(meta[k].get(f), str) or "fill in" in meta[k][f]]
    if unfilled:
        raise bad(f"does not say {', '.join(unfilled)} (the torch build and CPU kind the file was trained and measured "
                  f"on)")
    shift = meta.get("jpeg_shift", {"images": 1, "exact_top1": 0, "jpeg_top1": 0})  # optional: measured or absent
    if not (isinstance(shift, dict) and set(shift) == {"images", "exact_top1", "jpeg_top1"}
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in shift.values())):
        raise bad("has a meta.jpeg_shift that is not {\"images\": N, \"exact_top1\": X, \"jpeg_top1\": Y}")
    return Weights(**{**raw, "meta": meta})


def manifest(path: str | Path | None = None) -> tuple[Weights, ...]:
    """The manifest's rows, checked: field types, tags, hashed file names, one default per model, no duplicate."""
    return _manifest(Path(path) if path is not None else MANIFEST)


@lru_cache(maxsize=4)
def _manifest(path: Path) -> tuple[Weights, ...]:
    try:
        tree = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RessenetError(f"the weights manifest {path} is unreadable ({type(e).__name__}: {e}); restore it from "
                            f"the repository") from None
    if not isinstance(tree, dict) or tree.get("format") != 1 or not isinstance(tree.get("weights"), list):
        raise RessenetError(f"{path} is not a format-1 weights manifest ({{\"format\": 1, \"weights\": [rows]}}); "
                            f"restore it from the repository")
    rows = tuple(_row(i, raw, path) for i, raw in enumerate(tree["weights"]))
    seen: dict[tuple[str, str], int] = {}
    for i, w in enumerate(rows):
        if (w.model, w.tag) in seen:
            raise RessenetError(f"{path}: rows {seen[w.model, w.tag]} and {i} are both {w.model} tag {w.tag!r}; "
                                f"keep one")
        seen[w.model, w.tag] = i
    for model in {w.model for w in rows}:
        n = sum(w.default for w in rows if w.model == model)
        if n != 1:
            raise RessenetError(f"{path}: {model} has {n} default rows; mark exactly one \"default\": true")
    return rows


def list_pretrained(pattern: str | None = None) -> list[Weights]:
    """The published weights, optionally of the models matching a shell pattern (``"res_se_net*"``)."""
    return [w for w in manifest() if pattern is None or fnmatch.fnmatchcase(w.model, pattern) or pattern in w.model]


def get_weights(model: str, tag: str | None = None) -> Weights:
    """The manifest row of ``model`` (its default, or ``tag``); a model or tag without weights is refused in one
    line that names what exists."""
    rows = [w for w in manifest() if w.model == model]
    if not rows:
        have = ", ".join(sorted({w.model for w in manifest()})) or "none yet"
        raise RessenetError(f"ressenet publishes no weights for {model}; models with weights: {have} (`ressenet "
                            f"models --pretrained`); for another model pass pretrained=PATH_OR_URL of a file "
                            f"`ressenet export RUN_DIR` wrote")
    found = [w for w in rows if (w.default if tag is None else w.tag == tag)]
    if not found:
        raise RessenetError(f"{model} has no weights tagged {tag!r}; its tags: {', '.join(w.tag for w in rows)}")
    return found[0]


def is_tag(text: Any) -> bool:
    """Whether ``pretrained=text`` names a manifest tag rather than a file or URL: a tag is lower-case letters,
    digits and '-' (no dot, no slash), and no file of that name is here."""
    return isinstance(text, str) and bool(_TAG.fullmatch(text)) and not Path(text).exists()


def _checkout_weights() -> Path | None:
    """The repository's ``weights/`` folder when this package runs from a checkout (``src/ressenet``), else None."""
    pkg = Path(__file__).resolve().parent
    root = pkg.parent.parent
    return root / WEIGHTS_DIR if pkg.parent.name == "src" and (root / WEIGHTS_DIR).is_dir() else None


def _checked(path: Path, w: Weights, fix: str) -> Path:
    got = sha256_file(path)
    if got != w.sha256:
        raise RessenetError(f"{path} has sha256 {got[:16]}..., the manifest's {w.model} {w.tag} row says "
                            f"{w.sha256[:16]}...: the file was changed or damaged, refused before reading any "
                            f"weight; {fix}")
    return path


def weights_path(w: Weights, cache_dir: str | Path | None = None) -> Path:
    """The local file of a manifest row, its sha256 checked: the checkout's ``weights/``, else the download cache,
    else downloaded from ``$RESSENET_WEIGHTS_URL``/FILE into the cache."""
    local = _checkout_weights()
    if local is not None and (local / w.file).is_file():
        return _checked(local / w.file, w, f"restore it with `git checkout -- {WEIGHTS_DIR}/{w.file}`")
    cached = cached_path(w.file, w.sha256, cache_dir)
    if cached.is_file():
        return _checked(cached, w, f"delete {cached} to download it again")
    base = os.environ.get(URL_ENV, "").strip()
    if not base:
        raise RessenetError(f"the {w.model} weights {w.file} are neither in a checkout's {WEIGHTS_DIR}/ folder nor "
                            f"in the cache {cached.parent.parent}; set {URL_ENV} to a base URL that serves {w.file}, "
                            f"or use ressenet from a clone of its repository")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https", "file"):
        raise RessenetError(f"{URL_ENV}={base!r} is not an http(s) or file URL; set it to the base URL of a folder "
                            f"that serves {w.file}")
    path, _ = fetch_weights(f"{base.rstrip('/')}/{urllib.parse.quote(w.file)}", sha256=w.sha256,
                            cache_dir=cache_dir)
    return path


def pretrained_cfg(w: Weights) -> dict[str, Any]:
    """What ``create_model(name, pretrained=True)`` adds to ``model.pretrained_cfg``: tag, accuracy, its label."""
    return {"tag": w.tag, "label": w.label, "test_top1": w.meta["test_top1"], "test_top5": w.meta["test_top5"],
            "licence": w.meta["licence"]}


class EvalTransform:
    """Evaluation preprocessing of a set of weights: an RGB image (PIL image, HxWx3 uint8 array, or 3xHxW tensor:
    uint8, or float in [0, 1]) to a normalised float32 3xHxW tensor. No resizing: the size must be the weights'."""

    def __init__(self, mean: Any, std: Any, input_size: Any = (3, 32, 32)) -> None:
        self.mean, self.std, self.input_size = tuple(map(float, mean)), tuple(map(float, std)), tuple(input_size)

    def __repr__(self) -> str:
        return f"EvalTransform(mean={self.mean}, std={self.std}, input_size={self.input_size})"

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            x = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        else:
            if hasattr(image, "convert"):  # a PIL image
                image = image.convert("RGB")
            arr = np.asarray(image)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise RessenetError(f"cannot preprocess a {arr.dtype} array of shape {arr.shape}: give a PIL image, "
                                    f"an HxWx3 uint8 array or a 3xHxW tensor")
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
        if tuple(x.shape) != self.input_size:
            raise RessenetError(f"the image is {'x'.join(map(str, x.shape))} (CxHxW), these weights take "
                                f"{'x'.join(map(str, self.input_size))}: resize it first (PIL: "
                                f"img.resize(({self.input_size[2]}, {self.input_size[1]})))")
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (x - mean) / std


def transforms(source: Any) -> EvalTransform:
    """The evaluation preprocessing of a model (its ``pretrained_cfg``), a :class:`Weights`, a ``pretrained_cfg``
    dict, or a model name (its default published weights): ``ressenet.transforms(model)(image)``."""
    if isinstance(source, Weights):
        return source.transforms()
    if isinstance(source, str):
        return get_weights(source).transforms()
    cfg = source if isinstance(source, dict) else getattr(source, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("mean", "std", "input_size")):
        raise RessenetError(f"cannot tell the preprocessing of a {type(source).__name__}: give a ressenet model, "
                            f"a Weights row, a pretrained_cfg dict or a model name")
    if cfg.get("sha256") is None:
        raise RessenetError("this model holds no trained weights (pretrained_cfg has no sha256), so it has no "
                            "preprocessing of its own: load it with create_model(name, pretrained=True)")
    return EvalTransform(cfg["mean"], cfg["std"], cfg["input_size"])
