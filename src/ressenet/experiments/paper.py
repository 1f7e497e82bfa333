"""The paper's printed numbers (Varshaneya et al., arXiv:1902.06066), bundled with the package, and their checks.

``paper/results.csv`` holds the top-1/top-5 test accuracies of the paper's tables (single runs, best test accuracy
over training, as its reference code reports). The SE-ResNet rows are not printed in the paper: they are derived
as Res-SE-Net minus the printed "improvement over SE-ResNet" table. ``paper/improvements.csv`` holds the printed
improvement tables; recomputing them from the raw numbers exposes the paper's slips.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "PaperResult", "PaperImprovement", "PAPER_DIR", "PAPER_TABLES", "PAPER_DATASETS", "HE_PARAMS_M",
    "PARAM_CLAIMS", "paper_results", "paper_result", "paper_improvements", "SLIP_TOLERANCE",
]

PAPER_DIR = Path(__file__).resolve().parent / "paper"
PAPER_DATASETS = ("cifar10", "cifar100")
# (table key in results.csv, model family, title). The order is the paper's.
PAPER_TABLES: tuple[tuple[str, str, str], ...] = (
    ("baseline", "resnet", "Baseline ResNet"),
    ("no_bridge", "resnet_nobridge", "ResNet without bridge-connections"),
    ("proposed", "res_se_net", "Res-SE-Net"),
    ("derived", "se_resnet", "SE-ResNet"),
)
# He et al. (2016), Table 6: parameters of the CIFAR ResNets, in millions.
HE_PARAMS_M: dict[int, float] = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}
# The paper's parameter claims: Res-SE-Net-44 has this many percent fewer parameters than ... (10-class head).
PARAM_CLAIMS: tuple[tuple[str, str, float], ...] = (
    ("res_se_net44", "resnet110", 61.75),
    ("res_se_net44", "se_resnet110", 62.06),
)
# A printed value and its recomputation differ by more than rounding: a slip.
SLIP_TOLERANCE = 0.005


@dataclass(frozen=True)
class PaperResult:
    """One accuracy the paper prints (results.csv): table, family, depth, dataset, top-1 and top-5 in percent."""

    table: str
    family: str
    depth: int
    dataset: str
    top1: float
    top5: float
    source: str  # "printed", "derived", or "printed (note)"

    @property
    def derived(self) -> bool:
        return self.source.startswith("derived")

    @property
    def note(self) -> str:
        """The note in parentheses of the source column, e.g. "suspected copy error"."""
        return self.source.partition("(")[2].rstrip(")").strip()


@dataclass(frozen=True)
class PaperImprovement:
    """One cell of a paper improvement table: printed, and recomputed from ``results.csv``."""

    over: str  # "resnet" | "se_resnet"
    depth: str  # "20" ... "110" | "average"
    dataset: str
    metric: str  # "top1" | "top5"
    printed: float
    recomputed: float
    note: str = ""

    @property
    def slip(self) -> bool:
        return abs(self.printed - self.recomputed) > SLIP_TOLERANCE + 1e-9


def _read_csv(name: str) -> list[dict[str, str]]:
    text = (PAPER_DIR / name).read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


@lru_cache(maxsize=1)
def paper_results() -> tuple[PaperResult, ...]:
    """Every row of the paper's accuracy tables (``paper/results.csv``)."""
    return tuple(PaperResult(table=r["table"], family=r["model"], depth=int(r["depth"]), dataset=r["dataset"],
                             top1=float(r["top1"]), top5=float(r["top5"]), source=r["source"].strip())
                 for r in _read_csv("results.csv"))


def paper_result(family: str, depth: int, dataset: str) -> PaperResult | None:
    """The paper's number for a model family, depth and dataset (``cifar10``/``cifar100``), or None."""
    for r in paper_results():
        if r.family == family and r.depth == depth and r.dataset == dataset:
            return r
    return None


@lru_cache(maxsize=1)
def paper_improvements() -> tuple[PaperImprovement, ...]:
    """The printed improvement tables beside the same numbers recomputed from the paper's own accuracies.

    Per depth: Res-SE-Net minus the other model, to two decimals as printed. Average: the mean over the five
    depths of the recomputed per-depth values. An average whose printed value is the mean of the printed
    per-depth values but differs from the recomputed one carries a slip of a per-depth cell; the note says so.
    """
    rows = _read_csv("improvements.csv")
    columns = {"c10_top1": ("cifar10", "top1"), "c10_top5": ("cifar10", "top5"),
               "c100_top1": ("cifar100", "top1"), "c100_top5": ("cifar100", "top5")}
    out: list[PaperImprovement] = []
    for over in ("resnet", "se_resnet"):
        mine = [r for r in rows if r["over"] == over]
        for col, (dataset, metric) in columns.items():
            recomputed: list[float] = []
            printed_rows: list[float] = []
            for r in mine:
                printed = float(r[col])
                if r["depth"] == "average":
                    value = round(sum(recomputed) / len(recomputed), 3)
                    mean_printed = sum(printed_rows) / len(printed_rows)
                    note = ""
                    if abs(printed - value) > SLIP_TOLERANCE:
                        note = ("follows a slip in a per-depth cell: the printed average is the mean of the printed "
                                "rows" if abs(printed - mean_printed) <= SLIP_TOLERANCE
                                else f"the printed rows average {mean_printed:.3f}")
                    out.append(PaperImprovement(over, "average", dataset, metric, printed, value, note))
                    continue
                depth = int(r["depth"])
                a, b = paper_result("res_se_net", depth, dataset), paper_result(over, depth, dataset)
                if a is None or b is None:
                    continue
                value = round(getattr(a, metric) - getattr(b, metric), 2)
                note = "SE-ResNet numbers are derived from this table, so it agrees by construction" \
                    if b.derived else ""
                recomputed.append(value)
                printed_rows.append(printed)
                out.append(PaperImprovement(over, str(depth), dataset, metric, printed, value, note))
    return tuple(out)


def percent_fewer(small: int, large: int) -> float:
    """How many percent fewer parameters ``small`` has than ``large``."""
    return 100.0 * (1.0 - small / large) if large else math.nan
