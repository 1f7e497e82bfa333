"""Reading run directories: the runs, their configs and data labels, how they group, how far an unfinished one got.

One module for everything that reads what ``ressenet train`` wrote, used by the grid (skip and resume), the report,
the figures and the findings page. It never trains and never writes.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ressenet.data.constants import DATASET_INFO
from ressenet.engine.config import RESULT_NEUTRAL_KEYS, Config, ConfigError, config_from_dict, flatten_config
from ressenet.engine.rundir import RunDir
from ressenet.engine.runfiles import RunFileError, finite, read_config_tree, read_regular
from ressenet.engine.runfiles import last_iteration as last_metrics_iteration
from ressenet.experiments.stats import Summary, summarize
from ressenet.models import FAMILIES, family_order, model_info

__all__ = ["FinishedRun", "Group", "collect_runs", "group_runs", "dataset_label", "parse_model", "last_iteration",
           "protocol_text", "config_protocol", "label_order", "family_order", "METRICS", "METRIC_TITLES",
           "FAMILY_TITLES", "COMPARISONS",
           "PAPER_DEPTHS", "GROUPING_IGNORED"]


# metric kind -> (top-1 key, top-5 key) in summary.json
METRICS: dict[str, tuple[str, str]] = {
    "final": ("test_top1", "test_top5"),
    "best_on_test": ("best_test_top1", "best_test_top5"),
    "val_selected": ("selected_test_top1", "selected_test_top5"),
}
METRIC_TITLES = {"final": "final", "best_on_test": "best-on-test", "val_selected": "val-selected"}
FAMILY_TITLES: dict[str, str] = {f.key: f.title for f in FAMILIES}  # the families table's (models/families.py)
PAPER_DEPTHS = (20, 32, 44, 56, 110)
# (family a, family b, title, printed paper table "over" or None): a minus b at the same depth and dataset.
# The paper's comparisons (Tables 1-4 print the first two) and its ablations, in the report's order.
COMPARISONS: tuple[tuple[str, str, str, str | None], ...] = (
    ("res_se_net", "resnet", "Res-SE-Net over ResNet", "resnet"),
    ("res_se_net", "se_resnet", "Res-SE-Net over SE-ResNet", "se_resnet"),
    ("resnet_nobridge", "resnet", "ResNet without bridges minus ResNet (do bridges matter?)", None),
    ("res_se_net_se_before_conv", "res_se_net", "Ablation: SE before the bridge convolution minus Res-SE-Net", None),
    ("res_se_net_se_all_identity", "res_se_net", "Ablation: SE on every identity connection minus Res-SE-Net", None),
)
# Config keys that do not split runs into different protocols (besides the result-neutral ones): the cell axes,
# the head size (set by the dataset), the memory format, and how often the test set is looked at.
GROUPING_IGNORED = RESULT_NEUTRAL_KEYS | {"model.name", "data.dataset", "run.seed", "model.num_classes",
                                         "run.channels_last", "run.eval_every"}


def parse_model(name: str) -> tuple[str | None, int | None]:
    """(family key, depth) of a registered model name, from the registry; (None, None) for another name."""
    info = model_info(name)
    return (info.family.key, info.depth) if info is not None else (None, None)


def dataset_label(summary: dict[str, Any], config: dict[str, Any]) -> tuple[str, str | None]:
    """A human label for a run's data and the paper dataset it may be compared with (None: not comparable).

    From the dataset registry (data/constants.py ``DATASET_INFO``) and the structured fields a run records
    (``data.classes``, ``data.test_size``, ``data.lossless``), never from prose.
    """
    ds = summary.get("dataset") or (config.get("data") or {}).get("dataset") or "?"
    data = summary.get("data") or {}
    info = DATASET_INFO.get(str(ds))
    if info is not None and info.classes is not None:  # an official dataset, read as such
        return info.title, info.name
    if info is not None and info.reader == "imagefolder":
        classes = tuple(data.get("classes") or ())
        copy = {True: "image-folder copy", False: "JPEG copy"}.get(data.get("lossless"),
                                                                   "image-folder copy, format unrecorded")
        for known in DATASET_INFO.values():
            if known.classes is not None and classes == known.classes and data.get("test_size") == 10_000:
                return f"{known.title} ({copy})", known.name
        root = (config.get("data") or {}).get("data_root") or data.get("description") or "?"
        return f"image folder {Path(str(root)).name}", None
    if info is not None:
        return info.title, None
    return str(ds), None


# --------------------------------------------------------------------------------------------------------------
# Reading run directories
# --------------------------------------------------------------------------------------------------------------
@dataclass
class FinishedRun:
    """One finished run directory."""

    path: Path
    rel: str
    summary: dict[str, Any]
    config: dict[str, Any]
    meta: dict[str, Any]
    model: str
    family: str | None
    depth: int | None
    label: str
    compare_to: str | None
    seed: int | None
    protocol: tuple[tuple[str, Any], ...]

    def value(self, key: str) -> float | None:
        return _finite(self.summary.get(key))


def _finite(v: Any) -> float | None:
    return float(v) if finite(v) else None  # a 400-digit integer is no float: not a value


def _load_yaml(path: Path) -> dict[str, Any]:
    """A finished run's config.yaml, or {} when torn (its summary holds the config); RunFileError for a FIFO."""
    read_regular(path)  # a FIFO, a device or a huge file: RunFileError, and the run is skipped
    try:
        return read_config_tree(path) or {}
    except RunFileError:
        return {}


def config_protocol(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The result-relevant differences from the defaults (the paper's protocol), as sorted (key, value) pairs."""
    try:
        tree = config_from_dict({k: v for k, v in config.items() if k != "meta"}).to_dict()
    except (ConfigError, TypeError, AttributeError):
        tree = config
    flat, default = flatten_config(tree), flatten_config(Config().to_dict())
    return tuple(sorted((k, _hashable(v)) for k, v in flat.items()
                        if k not in GROUPING_IGNORED and default.get(k, object()) != v))


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def protocol_text(protocol: tuple[tuple[str, Any], ...]) -> str:
    """A protocol (``config_protocol``) in words: the paper's, or its differences from it as ``key=value``."""
    if not protocol:
        return "the paper's protocol (64,000 iterations, batch 128, SGD momentum 0.9, lr 0.1 ÷10 at 32k and 48k, " \
               "weight decay 1e-4)"
    parts = []
    for k, v in protocol:
        text = ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
        parts.append(f"{k}={text}")
    return "differs from the paper's protocol: " + ", ".join(parts)


def collect_runs(runs_dir: str | Path) -> tuple[list[FinishedRun], list[tuple[str, str]], list[str]]:
    """Every finished run under ``runs_dir`` (any depth), the unfinished ones, and problems found.

    Returns:
        (finished runs, [(unfinished dir, progress)], [problem lines]).

    Raises:
        FileNotFoundError: ``runs_dir`` does not exist.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory {root} not found; run `ressenet grid PRESET --runs-dir {root}` first")
    runs: list[FinishedRun] = []
    problems: list[str] = []
    finished_dirs = set()
    for found in RunDir.below(root):
        d, path = found.path, found.summary_file
        finished_dirs.add(d)
        rel = str(d.relative_to(root)) if d != root else "."
        # A damaged run is left out of every table (each group's n counts exactly the runs behind its numbers)
        # with the reader's one line naming its file and field.
        try:
            summary = found.read_summary()
            if not isinstance(summary.get("model"), str):
                raise RunFileError(f"{path}: model is missing, not a model name; delete it and run the run again")
            cfg_file = _load_yaml(found.config_file)
            (read_regular(found.metrics_file) or b"").decode("utf-8")
        except RunFileError as e:
            problems.append(f"{e}; skipped")
            continue
        except UnicodeDecodeError:
            problems.append(f"{rel}: metrics.jsonl is unreadable (not UTF-8); skipped")
            continue
        config = summary.get("config") if isinstance(summary.get("config"), dict) else cfg_file
        meta = cfg_file.get("meta") if isinstance(cfg_file.get("meta"), dict) else {}
        model = summary["model"]
        family, depth = parse_model(model)
        label, compare_to = dataset_label(summary, config)
        seed = summary.get("seed", (config.get("run") or {}).get("seed"))
        runs.append(FinishedRun(path=d, rel=rel, summary=summary, config=config, meta=meta, model=model, family=family,
                        depth=depth, label=label, compare_to=compare_to,
                        seed=int(seed) if isinstance(seed, int) else None, protocol=config_protocol(config)))
    unfinished = []
    seen = set()
    for marker in (RunDir.METRICS, RunDir.LAST):
        for path in sorted(root.rglob(marker)):
            d = path.parent
            if d in finished_dirs or d in seen:
                continue
            seen.add(d)
            it = last_iteration(d)
            unfinished.append((str(d.relative_to(root)), f"iteration {it:,}" if it is not None else "started"))
    return runs, sorted(unfinished), problems


@dataclass
class Group:
    """The runs of one (protocol, dataset label, model): the seeds of one table cell."""

    protocol: tuple[tuple[str, Any], ...]
    label: str
    compare_to: str | None
    model: str
    family: str | None
    depth: int | None
    runs: list[FinishedRun] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [v for v in (r.value(key) for r in self.runs) if v is not None]

    def stat(self, key: str) -> Summary:
        return summarize(self.values(key))

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def params(self) -> int | None:
        vals = [r.summary.get("params") for r in self.runs if isinstance(r.summary.get("params"), int)]
        return vals[0] if vals else None

    @property
    def seeds(self) -> list[int | None]:
        return sorted((r.seed for r in self.runs), key=lambda s: (s is None, s or 0))


def group_runs(runs: Iterable[FinishedRun]) -> dict[tuple, Group]:
    """Runs grouped by (protocol, dataset label, model), ordered by protocol size, dataset, family, depth."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        key = (r.protocol, r.label, r.model)
        if key not in groups:
            groups[key] = Group(r.protocol, r.label, r.compare_to, r.model, r.family, r.depth)
        groups[key].runs.append(r)
    return groups


def label_order(label: str) -> tuple:
    """CIFAR-10 labels first, then CIFAR-100, then anything else (the order of every table and figure)."""
    return (0 if label.startswith("CIFAR-10 ") or label == "CIFAR-10" else
            1 if label.startswith("CIFAR-100") else 2, label)



def last_iteration(out: Path) -> int | None:
    """The ``iter`` of the last line of ``metrics.jsonl`` (None when absent or empty)."""
    return last_metrics_iteration(RunDir(out).metrics_file)
