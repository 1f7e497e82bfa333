"""The configuration tree: one dataclass per concern, the single source of truth for a run.

Precedence (lowest to highest): dataclass defaults (the paper's protocol, docs/design.md) -> a YAML file
(``--config``) -> command-line flags and ``--set section.key=value`` overrides. Unknown keys raise.
The resolved tree is written to ``config.yaml`` in the run directory and stored in every checkpoint.

Each field carries its help text, default and choices as data (``option(...)``: ``dataclasses.field`` metadata);
``ressenet train``'s flags and their ``--help`` are generated from it (cli.py), and ``Config.validate`` checks every
name against the choices with a did-you-mean (ressenet.names.suggest) before anything touches the disk.
"""
from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ressenet.engine.yamlfile import read_config_file
from ressenet.errors import ConfigError, quote
from ressenet.data.constants import DATASETS, DOWNLOADABLE
from ressenet.models import list_models
from ressenet.models.resnet import LAYOUTS, SHORTCUTS
from ressenet.names import suggest

__all__ = ["ModelConfig", "DataConfig", "OptimConfig", "RunConfig", "Config", "ConfigError", "load_config",
           "diff_configs", "all_keys", "apply_overrides", "config_from_dict", "flatten_config",
           "parse_value", "dotted_value", "RESULT_NEUTRAL_KEYS", "SECTIONS", "option", "check_choice", "field_choices"]


def option(default: Any = MISSING, *, help: str, choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None,
           default_factory: Callable[[], Any] | Any = MISSING, flag: str | None = "", metavar: str | None = None,
           default_text: str | None = None, choices_text: str | None = None,
           applies_to: Callable[[], Sequence[str]] | None = None) -> Any:
    """A config field that explains itself: its help, default and choices are data (``dataclasses.fields(...)``'s
    ``metadata``), from which ``ressenet train``'s flags and their ``--help`` are generated (cli.py).

    Args:
        help: What the field does (one sentence or two; the reasons that used to sit in comments).
        choices: The valid values (checked by ``Config.validate`` with a did-you-mean), or a function returning
            them (the model registry; the data package's names, imported only when asked).
        flag: The command-line flag; ``""``: ``--`` + the key with dashes; ``None``: no flag (``--set`` only).
        metavar: The flag's placeholder; default: ``{a,b,c}`` for choices, else the key in capitals.
        default_text: How ``--help`` shows a ``None`` default (what ``None`` resolves to).
        choices_text: How to refer to the choices when they are too many to list (``see `ressenet models```).
        applies_to: A function returning the names the field applies to, listed after the help in ``--help``
            (``--download``: the downloadable datasets, from the data package's table, imported only when asked).
    """
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "default_text": default_text,
            "choices_text": choices_text, "applies_to": applies_to}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _model_names() -> list[str]:
    return list_models()


def _dataset_names() -> tuple[str, ...]:
    return DATASETS


def _downloadable_names() -> tuple[str, ...]:
    return DOWNLOADABLE


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PROGRESS_MODES = ("auto", "bar", "plain", "none")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
NORMALIZATIONS = ("paper", "dataset")
# How several members of one command train together (engine/fused.py); a flag of train and grid, not a config field
# (it changes the arithmetic's order, not what is computed).
FUSED_MECHANISMS = ("auto", "sequential", "graphs", "grouped")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # cuda:N: any GPU index; checked by _DEVICE_RE
_DEVICE_RE = re.compile(r"(auto|cpu|cuda(:\d+)?)")


@dataclass
class ModelConfig:
    """Which network: a registered name and the options its factory takes."""

    name: str = option("res_se_net20", flag="--model", metavar="NAME[,NAME...]", choices=_model_names,
                       choices_text="see `ressenet models`",
                       help="registered model, e.g. resnet56, se_resnet56, res_se_net56 (see `ressenet models`); "
                            "with `ressenet train`, a comma list (--model a,b) trains the members together (fused; "
                            "the product with --seed's list), each in OUT/<model>-s<seed>")
    num_classes: int | None = option(None, default_text="from the dataset",
                                     help="output classes of the linear head")
    shortcut: str | None = option(None, choices=SHORTCUTS, default_text="the model's, B",
                                  help="bridge shortcut where a stage changes shape: B = conv1x1 + BN projection "
                                       "(the paper's bridges), A = zero-padded identity")
    se_reduction: int | None = option(None, default_text="16, the paper's",
                                      help="squeeze-and-excitation reduction ratio r (C -> C/r -> C)")
    layout: str | None = option(None, choices=LAYOUTS, default_text="basic",
                                help="block layout: basic = basic blocks at every depth (the paper's parameter "
                                     "counts); released = the released code's quirk of bottleneck blocks for "
                                     "depth >= 44")


@dataclass
class DataConfig:
    """Which data, where it is, how it is split, normalised and augmented."""

    dataset: str = option("cifar10", choices=_dataset_names,
                          help="dataset; imagefolder reads --data-root (train/ and test/ class folders, or an "
                               "archive), synthetic makes random images (smoke tests)")
    data_root: str | None = option(None, default_text="./data",
                                   help="folder (or image-folder archive) holding the dataset")
    download: bool = option(False, help="download and verify the official archive when it is missing",
                            applies_to=_downloadable_names)
    cache_dir: str | None = option(None, default_text="$RESSENET_CACHE, else ~/.cache/ressenet",
                                   help="where decoded image folders are cached")
    val_split: int = option(0, help="images held out of the training set for model selection (He et al.: 5000); "
                                    "0 = no validation split")
    normalization: str = option("paper", choices=NORMALIZATIONS,
                                help="input normalisation: paper = docs/design.md's constants for every dataset; "
                                     "dataset = per-dataset statistics")
    augment: bool = option(True, help="training augmentation: zero-pad 4, random 32x32 crop, horizontal flip "
                                      "(the paper's)")
    train_limit: int = option(0, flag=None,
                              help="smoke tests: train on a fixed random subset of N images (0 = all); for "
                                   "synthetic, the training split's size")
    test_limit: int = option(0, flag=None,
                             help="smoke tests: evaluate on a fixed random subset of N images (0 = all); for "
                                  "synthetic, the test split's size")


@dataclass
class OptimConfig:
    """The optimisation protocol: iterations, batch, SGD and its step schedule."""

    iters: int = option(64_000, help="training iterations (SGD steps)")
    batch_size: int = option(128, help="training batch size (the total over all processes under DDP)")
    lr: float = option(0.1, help="initial learning rate")
    momentum: float = option(0.9, help="SGD momentum, in [0, 1)")
    nesterov: bool = option(False, help="Nesterov momentum")
    weight_decay: float = option(1e-4, help="L2 weight decay, on all parameters as in the released code")
    milestones: list[int] = option(default_factory=lambda: [32_000, 48_000], metavar="ITER[,ITER...]",
                                   help="iterations at which the learning rate is multiplied by --gamma "
                                        "(increasing, comma-separated)")
    gamma: float = option(0.1, help="learning-rate factor at each milestone, in (0, 1]")


@dataclass
class RunConfig:
    """How and where a run executes: directory, seed, device, precision, compile, logging and checkpoints."""

    out: str | None = option(None, metavar="DIR", default_text="runs/<model>_<dataset>_s<seed>",
                             help="run directory (config, checkpoints, metrics); an existing one is resumed")
    seed: int = option(12, metavar="SEED[,SEED...]",
                       help="random seed (12: the released script's); with `ressenet train`, a comma list "
                            "(--seed 1,2,3) trains one member per seed together (fused; the product with --model's "
                            "list)")
    device: str = option("auto", choices=DEVICES,
                         help="where to train: cpu, cuda (this process's GPU), cuda:N (GPU N); auto = the GPU when "
                              "PyTorch sees one, else the CPU")
    precision: str = option("auto", choices=PRECISIONS,
                            help="autocast precision; auto = bf16 on a GPU that supports it and on a CPU with native "
                                 "bf16 arithmetic (AVX-512 BF16 or AMX), else fp32 (fp16 needs a GPU); a resumed run "
                                 "keeps what it started with")
    channels_last: bool | None = option(None, default_text="on where it is faster (CUDA, and CPU convolutions)",
                                        help="channels-last memory format")
    compile: bool | None = option(
        None, default_text="auto",
        help="torch.compile. auto (engine.setup.resolve_compile): on for a single CUDA device (CUDA graphs); on "
             "the CPU in fp32 for runs of engine.setup.CPU_COMPILE_MIN_ITERS iterations or more when a C++ compiler "
             "is found, in bf16 likewise where compiling it was measured to pay on such a CPU (engine/measured.py: "
             "AMX-BF16), else eager; off under DDP (BatchNorm + CUDA graphs + DDP "
             "is a known slow path, pytorch#139207). Measured in BENCHMARKS.md; a resumed run keeps its choice")
    compile_mode: str = option("auto", choices=COMPILE_MODES,
                               help="torch.compile mode; auto = reduce-overhead (CUDA graphs) on CUDA, default "
                                    "elsewhere")
    eval_every: int = option(1_000, help="iterations between test (and validation) evaluations; 0 = only at the end")
    log_every: int = option(100, help="iterations between training-loss log lines")
    ckpt_every: int = option(1_000, help="iterations between checkpoints (last.pt); 0 = only at the end")
    sync_bn: bool = option(False, help="synchronised BatchNorm across processes under DDP")
    eval_batch_size: int | None = option(
        None, default_text="1000 on CUDA, 100 on the CPU",
        help="evaluation batch size (BatchNorm is in eval mode: it does not change the result); on the CPU a "
             "large batch evaluates slower, its activations missing the cache (BENCHMARKS.md)")
    progress: str = option("auto", choices=PROGRESS_MODES,
                           help="progress display: bar, plain log lines, or none; auto = a bar on a terminal, "
                                "plain lines otherwise")
    tensorboard: bool = option(False, help="also write metrics.jsonl's scalars (training loss, top-1, lr, images/s, "
                                           "test and validation top-1/top-5/loss) as TensorBoard event files in the "
                                           "run directory (rank 0): tensorboard --logdir RUNS_DIR; needs the "
                                           "optional extra: pip install 'ressenet[tensorboard]'")
    grad_stats_every: int = option(0, flag="--log-grad-stats", metavar="N",
                                   help="every N iterations, record the gradient norm reaching each bridge block's "
                                        "input through the bridge and through the residual path, and every layer's "
                                        "weight-gradient norm, as a 'grads' line of metrics.jsonl (ressenet "
                                        "analyze plots them); that step runs eager; 0 = off")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}


def field_choices(f: Field) -> tuple[str, ...] | None:
    """The valid values of a config field, or None when any value of its type is allowed."""
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    return tuple(choices) if choices is not None else None


def check_choice(key: str, value: Any) -> None:
    """Raise a one-line ConfigError naming the closest valid name when ``value`` is not a valid ``key`` (dotted).

    Accepts ``None`` for optional fields (their default); used by ``Config.validate`` and for each element of
    ``ressenet train --model a,b``.
    """
    section, _, name = key.partition(".")
    f = next(f for f in fields(SECTIONS[section]) if f.name == name)
    choices = field_choices(f)
    if choices is None or value is None:
        return
    text = str(value)
    if key == "run.device":
        if _DEVICE_RE.fullmatch(text):
            return
        index = re.findall(r"\d+", text)
        candidates = [c for c in DEVICES if c != "cuda:N"] + [f"cuda:{index[0] if index else 0}"]
        hint = suggest(re.sub(r"^gpu", "cuda", text.lower()), candidates)  # --device gpu[:N] means CUDA
        raise ConfigError(f"{key}={quote(value)} is invalid: {hint}expected {'|'.join(DEVICES)}")
    if key == "model.shortcut":
        text = text.upper()  # the model accepts either case
    if text in choices:
        return
    if key == "model.name":
        raise ConfigError(f"unknown model {quote(value)} ({key}): {suggest(text, choices)}"
                          f"`ressenet models` lists all {len(choices)} names")
    raise ConfigError(f"{key}={quote(value)} is invalid: {suggest(text, choices)}expected {'|'.join(choices)}")


@dataclass
class Config:
    """A run's whole configuration: one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """The nested dict ``config.yaml`` and checkpoints hold."""
        return asdict(self)

    def validate(self) -> Config:
        """Check every value, names first (each with a did-you-mean), before anything touches the disk."""
        for section, cls in SECTIONS.items():
            for f in fields(cls):
                check_choice(f"{section}.{f.name}", getattr(getattr(self, section), f.name))
        m, o, r, d = self.model, self.optim, self.run, self.data
        _require(m.num_classes is None or m.num_classes > 0, "model.num_classes", m.num_classes,
                 "a positive number of classes (or none: from the dataset)")
        _require(m.se_reduction is None or m.se_reduction > 0, "model.se_reduction", m.se_reduction,
                 "a positive reduction ratio, e.g. 16")
        _require(o.iters > 0, "optim.iters", o.iters, "a positive number of iterations")
        _require(o.batch_size > 0, "optim.batch_size", o.batch_size, "a positive batch size")
        _require(math.isfinite(o.lr) and 0 < o.lr <= FLOAT32_MAX, "optim.lr", o.lr,
                 f"a positive learning rate within float32's range (at most {FLOAT32_MAX:.3g}), e.g. 0.1")
        _require(math.isfinite(o.momentum) and math.isfinite(o.weight_decay) and math.isfinite(o.gamma),
                 "optim", (o.momentum, o.weight_decay, o.gamma), "finite momentum, weight decay and gamma")
        _require(0 <= r.seed < 2 ** 63, "run.seed", r.seed, "an integer in [0, 2**63)")
        _require(r.grad_stats_every >= 0, "run.grad_stats_every", r.grad_stats_every,
                 "0 (off) or a positive number of iterations")
        _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "a value in [0, 1)")
        _require(0 <= o.weight_decay <= FLOAT32_MAX, "optim.weight_decay", o.weight_decay,
                 f"a non-negative value within float32's range (at most {FLOAT32_MAX:.3g}), e.g. 1e-4")
        _require(0 < o.gamma <= 1, "optim.gamma", o.gamma, "a factor in (0, 1]")
        _require(list(o.milestones) == sorted(set(o.milestones)) and all(0 < m for m in o.milestones),
                 "optim.milestones", o.milestones, "increasing positive iterations, e.g. 32000,48000")
        _require(not (o.nesterov and o.momentum == 0), "optim.nesterov", o.nesterov, "momentum > 0 with Nesterov")
        for key in ("eval_every", "log_every", "ckpt_every"):
            _require(getattr(r, key) >= 0, f"run.{key}", getattr(r, key), "0 or a positive number of iterations")
        _require(r.eval_batch_size is None or r.eval_batch_size > 0, "run.eval_batch_size", r.eval_batch_size,
                 "a positive batch size")
        _require(d.val_split >= 0, "data.val_split", d.val_split, "0 (no validation split) or e.g. 5000")
        _require(d.train_limit >= 0 and d.test_limit >= 0, "data.train_limit", (d.train_limit, d.test_limit),
                 "0 (all images) or a positive number of images")
        return self


# The optimizer applies lr and weight decay to float32 weights: a larger factor cannot even be converted.
FLOAT32_MAX = 3.4028234663852886e38


# Keys that may differ when resuming a run directory: they change where or how a run executes or what it
# prints, not what it computes.
RESULT_NEUTRAL_KEYS = frozenset({
    "run.out", "run.device", "run.progress", "run.log_every", "run.ckpt_every", "run.eval_batch_size",
    "run.compile", "run.compile_mode", "data.data_root", "data.download", "data.cache_dir", "run.grad_stats_every",
    "run.tensorboard",
})


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={quote(value)} is invalid: expected {expected}")


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
        raise ConfigError(f"{key}={quote(text)} is not a valid {getattr(typ, '__name__', typ)}") from None


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
    # bool is an int to Python: `lr: true` must not train at lr 1.
    if typ in (int, float, bool, str) and not (isinstance(value, typ) and (typ is bool or not isinstance(value, bool))):
        raise ConfigError(f"{key}={quote(value)} should be a {typ.__name__}")
    return value


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Apply ``{"section.key": value}`` overrides (values may be strings from the command line)."""
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        sub = getattr(cfg, section, None) if section in {f.name for f in fields(Config)} else None
        if sub is None or key not in {f.name for f in fields(sub)}:
            raise ConfigError(f"unknown config key {quote(dotted)}; valid keys: {', '.join(all_keys())}")
        setattr(sub, key, _coerce(value, _field_type(type(sub), key), dotted))
    return cfg


def all_keys() -> list[str]:
    """Every dotted key, section by section."""
    return [f"{s.name}.{f.name}" for s in fields(Config) for f in fields(s.default_factory)]  # type: ignore[misc]


def flatten_config(tree: dict[str, Any] | Config, where: str | None = None) -> dict[str, Any]:
    """``{"optim": {"iters": 5}, "run.seed": 1}`` (or a Config) -> ``{"optim.iters": 5, "run.seed": 1}``.

    The one flattening of a config tree: sections and dotted keys both accepted, ``meta`` skipped. With ``where``
    (a file or option name) a malformed entry is a ConfigError naming it; without, it is skipped (reading run
    directories, where a damaged file must not stop a report).
    """
    if isinstance(tree, Config):
        tree = tree.to_dict()
    if not isinstance(tree, dict):
        if where is None:
            return {}
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(tree).__name__}")
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "meta":
            continue
        if "." in str(key):
            flat[str(key)] = value
        elif isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        elif where is not None:
            raise ConfigError(f"{where}: {quote(key)} must be a section (model, data, optim, run) or a dotted key")
    return flat


def config_from_dict(tree: dict[str, Any], where: str = "config") -> Config:
    """Build a validated Config from a nested dict (``config.yaml``, a checkpoint, a grid cell)."""
    tree = {k: v for k, v in tree.items() if k != "meta"}  # run metadata written beside the config
    return apply_overrides(Config(), flatten_config(tree, where)).validate()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file, then overrides; validated."""
    cfg = Config()
    if path is not None:
        apply_overrides(cfg, flatten_config(read_config_file(path), str(path)))
    apply_overrides(cfg, overrides or {})
    return cfg.validate()


def diff_configs(a: dict[str, Any], b: dict[str, Any], ignore: frozenset[str] = RESULT_NEUTRAL_KEYS) -> list[str]:
    """Dotted keys whose values differ between two config dicts, ignoring result-neutral keys."""
    fa, fb = flatten_config({k: v for k, v in a.items() if k != "meta"}, "a"), flatten_config(
        {k: v for k, v in b.items() if k != "meta"}, "b")
    return sorted(k for k in set(fa) | set(fb) if k not in ignore and fa.get(k) != fb.get(k))




def dotted_value(tree: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` ("optim.lr") of a nested config dict, or None where it has none."""
    section, _, k = key.partition(".")
    sec = tree.get(section)
    return sec.get(k) if isinstance(sec, dict) else None
