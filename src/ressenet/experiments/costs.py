"""What the paper's grid still lacks and what it costs: cells with fewer than ``MIN_SEEDS`` finished seeds, priced in
H200 hours at the measured aggregate rates of fused training (``rates.yaml``, BENCHMARKS.md's figures)."""
from __future__ import annotations

from pathlib import Path

from ressenet.data.constants import DATASET_INFO
from ressenet.experiments.contrasts import table, title_of
from ressenet.experiments.runs import PAPER_DEPTHS, Group
from ressenet.experiments.tables import Block

__all__ = ["fused_rate", "load_fused_rates", "missing_section", "MIN_SEEDS", "PAPER_FAMILIES"]

MIN_SEEDS = 3  # a cell with fewer seeds is "missing"
PAPER_FAMILIES = ("resnet", "se_resnet", "res_se_net", "resnet_nobridge")
PAPER_DATASETS = tuple((k, DATASET_INFO[k].title) for k in ("cifar10", "cifar100"))
ITER_IMAGES = 64_000 * 128  # images one protocol run trains on
RATES_FILE = Path(__file__).resolve().parent / "rates.yaml"


def load_fused_rates(path: Path = RATES_FILE) -> tuple[dict[int, float], int]:
    """The measured aggregate training rates of a fused group on one H200 (images/s by depth) and the depth other
    depths are extrapolated from, read from ``rates.yaml`` beside this module (BENCHMARKS.md's figures, "Fused
    training (several runs at once)"; the file is their one copy in the code)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    rates = {int(d): float(r) for d, r in data["fused_h200_images_per_second"].items()}
    return rates, int(data["extrapolate_from_depth"])


MEASURED_FUSED_RATE, _EXTRAPOLATE_FROM = load_fused_rates()


def _blocks_per_stage(depth: int) -> int:
    return (depth - 2) // 6


def fused_rate(depth: int) -> tuple[float, bool]:
    """(images/s, measured?) of a fused group at ``depth`` on one H200: measured, or scaled as 1 / blocks per stage
    from the measured depth ``extrapolate_from_depth`` of ``rates.yaml``."""
    if depth in MEASURED_FUSED_RATE:
        return MEASURED_FUSED_RATE[depth], True
    base = _EXTRAPOLATE_FROM
    return MEASURED_FUSED_RATE[base] * _blocks_per_stage(base) / _blocks_per_stage(depth), False


def _rates_text() -> str:
    """``119,000 images/s at depth 20, 45,000 at depth 56``: the measured rates in words."""
    return ", ".join(f"{rate:,.0f}{' images/s' if i == 0 else ''} at depth {d}"
                     for i, (d, rate) in enumerate(sorted(MEASURED_FUSED_RATE.items())))


def missing_section(groups: list[Group]) -> list[Block]:
    """The paper's grid (4 families x 5 depths x 2 datasets) short of ``MIN_SEEDS`` seeds, and its H200 hours."""
    have = {(g.compare_to, g.family, g.depth): g.n for g in groups}
    rows, total_runs, total_h = [], 0, 0.0
    for ds, title in PAPER_DATASETS:
        for d in PAPER_DEPTHS:
            short = {f: have.get((ds, f, d), 0) for f in PAPER_FAMILIES if have.get((ds, f, d), 0) < MIN_SEEDS}
            if not short:
                continue
            runs_needed = sum(MIN_SEEDS - n for n in short.values())
            rate, measured = fused_rate(d)
            hours = runs_needed * ITER_IMAGES / rate / 3600
            total_runs += runs_needed
            total_h += hours
            rows.append([title, d, ", ".join(f"{title_of(f)} ({n})" for f, n in short.items()), runs_needed,
                         f"{hours:.2f}" + ("" if measured else " (rate extrapolated)")])
    page: list[Block] = [
        f"Cells of the paper's grid (4 families x 5 depths x 2 datasets) at the full protocol with fewer than "
        f"{MIN_SEEDS} finished seeds (seeds present in parentheses), and the H200 hours they cost as fused groups at "
        f"the measured rates (BENCHMARKS.md: {_rates_text()}; other depths extrapolated as 1/blocks). CIFAR-100 "
        f"cannot be trained offline here (no copy of it on the project's machines); CIFAR-10 rows count the JPEG "
        f"copy.", ""]
    page += table(["data", "depth", "families short of seeds (n)", "runs to train", "H200 hours"], rows) + [""]
    return page + [f"In all: {total_runs} runs, about {total_h:.1f} H200 hours.", ""]
