"""The configuration tree: one dataclass per concern, the single source of truth for a run.

Precedence (lowest to highest): dataclass defaults (the paper's protocol, docs/design.md) -> a YAML file
(``--config``) -> command-line flags and ``--set section.key=value`` overrides. Unknown keys raise.
The resolved tree is written to ``config.yaml`` in the run directory and stored in every checkpoint.
"""
from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ModelConfig", "DataConfig", "OptimConfig", "RunConfig", "Config", "ConfigError", "load_config",
           "apply_overrides", "config_from_dict", "parse_value", "RESULT_NEUTRAL_KEYS"]


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line naming the key and the fix."""


@dataclass
class ModelConfig:
    name: str = "res_se_net20"
    num_classes: int | None = None  # None: from the dataset
    shortcut: str | None = None  # None: the model's default ("B", the paper's projection bridges)
    se_reduction: int | None = None  # None: 16 (the paper's)
    layout: str | None = None  # None: "basic"; "released" = the released code's bottleneck quirk


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    data_root: str | None = None
    download: bool = False
    cache_dir: str | None = None
    val_split: int = 0  # images held out of the training set for model selection (He et al.: 5000)
    normalization: str = "paper"  # "paper": docs/design.md's constants for every dataset; "dataset": per-dataset stats
    augment: bool = True  # zero-pad 4, random 32x32 crop, horizontal flip (the paper's)
    # Smoke-test sizes: use a fixed random subset of N images (0 = all); for `synthetic`, the split sizes.
    train_limit: int = 0
    test_limit: int = 0


@dataclass
class OptimConfig:
    iters: int = 64_000
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # on all parameters, as the released code
    milestones: list[int] = field(default_factory=lambda: [32_000, 48_000])
    gamma: float = 0.1


@dataclass
class RunConfig:
    out: str | None = None
    seed: int = 12  # the released script's seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 ; auto = bf16 on a GPU that supports it, else fp32
    channels_last: bool | None = None  # None: on where it is faster (CUDA, and CPU convolutions)
    # torch.compile. None (auto, engine.train.resolve_compile): on for a single CUDA device, where these
    # launch-bound small nets train about 3x faster compiled with CUDA graphs (BENCHMARKS.md, H200); on the CPU
    # for runs of CPU_COMPILE_MIN_ITERS or more when a C++ compiler is found (about 80 s to compile, then
    # 1.15-1.2x faster steps); off under DDP (BatchNorm + CUDA graphs + DDP is a known slow path, pytorch#139207).
    compile: bool | None = None
    compile_mode: str = "auto"  # auto: "reduce-overhead" (CUDA graphs) on CUDA, "default" elsewhere
    eval_every: int = 1_000  # iterations between test (and validation) evaluations; 0 = only at the end
    log_every: int = 100
    ckpt_every: int = 1_000
    sync_bn: bool = False
    # None: 1000 on CUDA, 100 on the CPU, where batch 1000 evaluated 1.34x slower (its activations miss the cache;
    # BENCHMARKS.md, evaluation throughput). BatchNorm is in eval mode: the batch does not change the result.
    eval_batch_size: int | None = None
    progress: str = "auto"  # auto | bar | plain | none


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> Config:
        o, r, d = self.optim, self.run, self.data
        _require(o.iters > 0, "optim.iters", o.iters, "a positive number of iterations")
        _require(o.batch_size > 0, "optim.batch_size", o.batch_size, "a positive batch size")
        _require(o.lr > 0, "optim.lr", o.lr, "a positive learning rate")
        _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "a value in [0, 1)")
        _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a non-negative value")
        _require(0 < o.gamma <= 1, "optim.gamma", o.gamma, "a factor in (0, 1]")
        _require(list(o.milestones) == sorted(set(o.milestones)) and all(0 < m for m in o.milestones),
                 "optim.milestones", o.milestones, "increasing positive iterations, e.g. 32000,48000")
        _require(not (o.nesterov and o.momentum == 0), "optim.nesterov", o.nesterov, "momentum > 0 with Nesterov")
        _require(r.precision in ("auto", "fp32", "bf16", "fp16"), "run.precision", r.precision, "auto|fp32|bf16|fp16")
        _require(r.compile_mode in ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                 "run.compile_mode", r.compile_mode,
                 "auto|default|reduce-overhead|max-autotune|max-autotune-no-cudagraphs")
        _require(r.progress in ("auto", "bar", "plain", "none"), "run.progress", r.progress, "auto|bar|plain|none")
        _require(r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda"), "run.device", r.device,
                 "auto|cpu|cuda|cuda:N")
        for key in ("eval_every", "log_every", "ckpt_every"):
            _require(getattr(r, key) >= 0, f"run.{key}", getattr(r, key), "0 or a positive number of iterations")
        _require(r.eval_batch_size is None or r.eval_batch_size > 0, "run.eval_batch_size", r.eval_batch_size,
                 "a positive batch size")
        _require(d.val_split >= 0, "data.val_split", d.val_split, "0 (no validation split) or e.g. 5000")
        _require(d.train_limit >= 0 and d.test_limit >= 0, "data.train_limit", (d.train_limit, d.test_limit),
                 "0 (all images) or a positive number of images")
        _require(d.normalization in ("paper", "dataset"), "data.normalization", d.normalization, "paper|dataset")
        return self


# Keys that may differ when resuming a run directory: they change where or how a run executes or what it
# prints, not what it computes.
RESULT_NEUTRAL_KEYS = frozenset({
    "run.out", "run.device", "run.progress", "run.log_every", "run.ckpt_every", "run.eval_batch_size",
    "run.compile", "run.compile_mode", "data.data_root", "data.download", "data.cache_dir",
})


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def parse_value(text: str, typ: Any, key: str) -> Any:
    """Parse a command-line string into the field's type (``int``, ``float``, ``bool``, ``list[int]``, optionals)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if text.lower() in ("none", "null", ""):
            return None
        return parse_value(text, args[0], key)
    if origin is list:
        (inner,) = typing.get_args(typ)
        parts = [p for p in text.replace("[", "").replace("]", "").split(",") if p.strip()]
        return [parse_value(p.strip(), inner, key) for p in parts]
    try:
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(float(text)) if "e" in text.lower() and float(text).is_integer() else int(text)
        if typ is float:
            return float(text)
        return str(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a valid {getattr(typ, '__name__', typ)}") from None


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/coerce a YAML value against a field type (YAML already gives ints, floats, bools, lists)."""
    if isinstance(value, str):
        return parse_value(value, typ, key)
    origin = typing.get_origin(typ)
    if value is None:
        if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(typ):
            return None
        raise ConfigError(f"{key} cannot be null")
    if origin in (typing.Union, types.UnionType):
        typ = [a for a in typing.get_args(typ) if a is not type(None)][0]
        origin = typing.get_origin(typ)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (inner,) = typing.get_args(typ)
        return [_coerce(v, inner, key) for v in value]
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ in (int, bool, str) and not (isinstance(value, typ) and (typ is bool or not isinstance(value, bool))):
        raise ConfigError(f"{key}={value!r} should be a {typ.__name__}")
    return value


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Apply ``{"section.key": value}`` overrides (values may be strings from the command line)."""
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        sub = getattr(cfg, section, None) if section in {f.name for f in fields(Config)} else None
        if sub is None or key not in {f.name for f in fields(sub)}:
            raise ConfigError(f"unknown config key {dotted!r}; valid keys: {', '.join(all_keys())}")
        setattr(sub, key, _coerce(value, _field_type(type(sub), key), dotted))
    return cfg


def all_keys() -> list[str]:
    return [f"{s.name}.{f.name}" for s in fields(Config) for f in fields(s.default_factory)]  # type: ignore[misc]


def _flatten(tree: dict[str, Any], where: str) -> dict[str, Any]:
    flat = {}
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: top-level key {section!r} must hold a mapping (model, data, optim, run)")
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def config_from_dict(tree: dict[str, Any], where: str = "config") -> Config:
    """Build a validated Config from a nested dict (``config.yaml``, a checkpoint, a grid cell)."""
    tree = {k: v for k, v in tree.items() if k != "meta"}  # run metadata written beside the config
    return apply_overrides(Config(), _flatten(tree, where)).validate()


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The nested mapping in a ``--config`` YAML file, with one-line errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass an existing YAML file to --config")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {p} must hold a mapping with sections model/data/optim/run")
    return tree


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file, then overrides; validated."""
    cfg = Config()
    if path is not None:
        apply_overrides(cfg, _flatten(read_config_file(path), str(path)))
    apply_overrides(cfg, overrides or {})
    return cfg.validate()


def diff_configs(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str] = RESULT_NEUTRAL_KEYS) -> list[str]:
    """Dotted keys whose values differ between two config dicts, ignoring result-neutral keys."""
    fa, fb = _flatten({k: v for k, v in a.items() if k != "meta"}, "a"), _flatten(
        {k: v for k, v in b.items() if k != "meta"}, "b")
    return sorted(k for k in set(fa) | set(fb) if k not in ignore and fa.get(k) != fb.get(k))


