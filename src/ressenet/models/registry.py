"""An explicit model registry: ``@register_model`` factories, ``create_model`` and ``list_models``.

The model protocol: what the rest of the package relies on in every registered model (tests/test_model_protocol.py
checks each one):

* ``create_model(name, num_classes=K, shortcut=, se_reduction=, layout=)``: the ResNet keyword arguments the
  engine passes (engine/setup.py ``build_model``); ``None`` keeps the model's default.
* ``.depth`` (int): the network's depth, which fused training groups by; ``.num_classes``; ``.options`` (the
  resolved ``shortcut``, ``se_reduction`` and ``layout``, which a weights file must match).
* ``.fc``: the classifier, an ``nn.Linear`` from ``.num_features`` to ``num_classes`` (checkpoints and export read
  the class count from ``fc.weight``); ``get_classifier``/``reset_classifier``, ``forward_features``/
  ``forward_head`` as timm's.
* Residual blocks carry ``is_bridge`` (bool: the block changes resolution or width; the paper's
  bridge-connections) and ``grad_probe`` (None; ``--log-grad-stats`` sets it for one step to record the gradient
  through the shortcut and the residual branch). SE blocks are ``models.layers.SEBlock`` modules, which
  ``ressenet analyze`` finds by type.
"""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ressenet.errors import RessenetError
from ressenet.names import natural_key
from ressenet.pretrained import get_weights, is_tag, pretrained_cfg, weights_path
from ressenet.weights import MODEL_OPTIONS, check_expected, fetch_weights, read_header, read_tensors

__all__ = ["register_model", "create_model", "load_pretrained", "list_models", "is_model", "model_info",
           "natural_key"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, Any] = {}


def register_model(fn: Callable[..., nn.Module], *, info: Any = None) -> Callable[..., nn.Module]:
    """Add a factory under its function name; a second registration of a name is a bug and raises.

    ``info`` (a :class:`~ressenet.models.families.ModelInfo`) says which family and depth the name is.
    """
    name = fn.__name__
    if name in _MODELS:
        raise RuntimeError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    if info is not None:
        _INFO[name] = info
    return fn


def model_info(name: str) -> Any:
    """The :class:`~ressenet.models.families.ModelInfo` (family, depth, placement, bridge) of a registered name,
    or ``None`` for a name outside the families table (another registered model, or an unknown name)."""
    return _INFO.get(name)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style pattern (``"res_se_net*"``)."""
    names = sorted(_MODELS, key=natural_key)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern) or (not _has_glob(pattern) and pattern in n)]
    return names


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def create_model(name: str, pretrained: str | os.PathLike[str] | bool | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model. ``None`` values are dropped so the model's own defaults apply (as timm does).

    ``pretrained``: ``True`` for the model's published weights (its default tag), a tag (``"c10-jpeg-compressed"``)
    for named ones (``ressenet models --pretrained`` lists them), or a weights file ``ressenet export`` wrote, by
    path or URL (``sha256=`` or a ``#sha256=HEX`` URL suffix checks a download; ``cache_dir=`` says where it is
    kept). Its header must be for this model, and for ``kwargs`` when given; see :func:`load_pretrained`.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or a bad option value.
        RessenetError: a weights file for another model, options or class count, or an unreadable one; a model or
            tag without published weights; a published file whose sha256 is not the manifest's.
    """
    if name not in _MODELS:
        close = [n for n in list_models() if n.split("_")[0] == name.split("_")[0]][:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; `ressenet models` lists all {len(_MODELS)} names")
    if pretrained is True or is_tag(pretrained):  # the published weights (ressenet/pretrained.py)
        w = get_weights(name, None if pretrained is True else str(pretrained))
        model = load_pretrained(weights_path(w, kwargs.pop("cache_dir", None)), sha256=w.sha256, name=name, **kwargs)
        model.pretrained_cfg = {**model.pretrained_cfg, **pretrained_cfg(w)}
        return model
    if pretrained is not None and pretrained is not False:
        if not isinstance(pretrained, (str, os.PathLike)):  # 0, 1.0, a dict: a slip, not a file
            raise ValueError(f"pretrained={pretrained!r}: expected the path or URL of a weights file "
                             f"`ressenet export` wrote (or None)")
        return load_pretrained(pretrained, name=name, **kwargs)
    return _MODELS[name](**{k: v for k, v in kwargs.items() if v is not None})


def load_pretrained(source: str | os.PathLike[str], *, sha256: str | None = None,
                    cache_dir: str | os.PathLike[str] | None = None, map_location: str | torch.device = "cpu",
                    name: str | None = None, **options: Any) -> nn.Module:
    """The model a weights file is for, with its weights: ``ressenet.load_pretrained("res_se_net56.safetensors")``.

    The name, options and class count come from the file's header (``name`` and ``options``, when given, must
    match it, else one line refuses the file before any weight is read); ``model.pretrained_cfg`` gets the file's
    normalisation, dataset, classes and sha256. Returned in training mode, as ``create_model`` returns models:
    call ``.eval()`` to evaluate.

    Args:
        source: A path, or an http(s)/file URL (downloaded once into the cache; needs ``sha256``).
        sha256: The file's expected sha256 (a URL's may also be given as ``#sha256=HEX``).
        cache_dir: Where downloads are kept (default ``$RESSENET_CACHE``, else ``~/.cache/ressenet``).
        map_location: Device the model is moved to.
        name, options: What the caller expects (``create_model(name, pretrained=...)`` passes its arguments).
    """
    try:  # checked before any download: a device that is not there is one line, not an AssertionError after
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"map_location={map_location!r}: not a device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RessenetError(f"map_location={map_location!r}: this machine has no CUDA device; use 'cpu'")
    path, digest = fetch_weights(source, sha256=sha256, cache_dir=cache_dir)
    header = read_header(path)
    check_expected(header, path, name, **options)
    try:
        model = create_model(header["model"], num_classes=header["num_classes"],
                             **{k: header["options"].get(k) for k in MODEL_OPTIONS})
    except ValueError as e:
        raise RessenetError(f"{path}: its header names a model this ressenet cannot build ({e})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(read_tensors(path, header, expected, header["model"]))
    model.to(map_location)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": tuple(header["mean"]), "std": tuple(header["std"]),
                            "normalization": header.get("normalization"), "dataset": header.get("dataset"),
                            "classes": (header.get("data") or {}).get("classes"), "file": str(path),
                            "sha256": digest}
    return model


def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
