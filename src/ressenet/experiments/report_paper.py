"""The report's sections that need no runs: the paper's improvement tables recomputed from its own numbers, and the
parameter counts of the models beside He et al.'s and the paper's claim."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from ressenet.data.constants import DATASET_INFO
from ressenet.experiments.paper import HE_PARAMS_M, PARAM_CLAIMS, paper_improvements, percent_fewer
from ressenet.experiments.runs import FAMILY_TITLES, PAPER_DEPTHS, FinishedRun, family_order
from ressenet.experiments.tables import Block, Section, Table
from ressenet.models import FAMILY, count_params, create_model

__all__ = ["model_params", "model_params_a", "paper_improvement_section", "params_section"]


@lru_cache(maxsize=None)
def model_params(name: str, num_classes: int = 10) -> int:
    """Parameters of a registered model with its defaults (basic blocks, projection bridges)."""
    return count_params(create_model(name, num_classes=num_classes))


@lru_cache(maxsize=None)
def model_params_a(name: str, num_classes: int = 10) -> int:
    """Parameters with He et al.'s option-A (subsample + zero-pad) shortcuts."""
    return count_params(create_model(name, num_classes=num_classes, shortcut="A"))


def _model_name(family: str, depth: int) -> str:
    return FAMILY[family].model_name(depth)


def paper_improvement_section() -> Section:
    """The paper's improvement tables, printed against recomputed; records for paper_improvements.csv."""
    imps = paper_improvements()
    md: list[Block] = ["## The paper's improvement tables, recomputed from its own numbers", "",
          "Printed: the paper's tables (`paper/improvements.csv`); recomputed: Res-SE-Net minus the other model from "
          "the paper's accuracies (`paper/results.csv`), averages as the mean of the recomputed rows. Cells that "
          "differ by more than rounding (0.005) are **slips**. The SE-ResNet accuracies are themselves derived from "
          "the printed \"over SE-ResNet\" table, so that table agrees by construction and checks only its averages.",
          ""]
    cols = [("cifar10", "top1", "CIFAR-10 top-1"), ("cifar10", "top5", "CIFAR-10 top-5"),
            ("cifar100", "top1", "CIFAR-100 top-1"), ("cifar100", "top5", "CIFAR-100 top-5")]
    for over, title in (("resnet", "Res-SE-Net over ResNet"), ("se_resnet", "Res-SE-Net over SE-ResNet")):
        rows = []
        for depth in [*map(str, PAPER_DEPTHS), "average"]:
            row: list[Any] = [depth]
            for ds, metric, _ in cols:
                imp = next((i for i in imps if i.over == over and i.depth == depth and i.dataset == ds
                            and i.metric == metric), None)
                if imp is None:
                    row.append("–")
                elif imp.slip:
                    row.append(f"**{imp.printed:g} → {imp.recomputed:g} (slip)**")
                else:
                    row.append(f"{imp.printed:g}")
            rows.append(row)
        md += [f"### {title}", "", Table(["Depth", *(c[2] for c in cols)], rows), ""]
    slips = [i for i in imps if i.slip]
    if slips:
        md += ["Slips found:", ""]
        for i in slips:
            ds = DATASET_INFO[i.dataset].title
            md.append(f"- over {FAMILY_TITLES[i.over]}, depth {i.depth}, {ds} {i.metric.replace('top', 'top-')}: "
                      f"printed {i.printed:g}, recomputed {i.recomputed:g}{f' ({i.note})' if i.note else ''}.")
        md.append("")
    records = [{"over": i.over, "depth": i.depth, "dataset": i.dataset, "metric": i.metric, "printed": i.printed,
                "recomputed": i.recomputed, "slip": i.slip, "note": i.note} for i in imps]
    return Section(md, {"paper_improvements.csv": records})


def params_section(runs: list[FinishedRun]) -> Section:
    """Parameter counts per family and depth, He et al.'s beside them, the paper's claim; records for params.csv."""
    param_rows: list[dict[str, Any]] = []
    families = ["resnet", "se_resnet", "res_se_net", "resnet_nobridge"]
    families += sorted({r.family for r in runs if r.family and r.family not in families}, key=family_order)
    rows = []
    for depth in PAPER_DEPTHS:
        row: list[Any] = [depth]
        for fam in families:
            name = _model_name(fam, depth)
            p10, p100 = model_params(name, 10), model_params(name, 100)
            row.append(f"{p10:,} ({p10 / 1e6:.2f}M)")
            param_rows.append({"model": name, "family": fam, "depth": depth, "params_10": p10, "params_100": p100,
                               "he_m": HE_PARAMS_M.get(depth) if fam == "resnet" else None})
        # He et al.'s CIFAR ResNets use parameter-free option-A shortcuts; the paper's bridges are option B.
        he = HE_PARAMS_M[depth]
        digits = len(str(he).split(".")[1])
        option_a = model_params_a(f"resnet{depth}")
        row.append(f"{option_a:,}")
        row.append(f"{he:g}M ({'matches option A' if round(option_a / 1e6, digits) == he else 'differs'})")
        param_rows[-len(families)]["params_10_option_a"] = option_a
        rows.append(row)
    md: list[Block] = ["## Parameters", "",
          "Counted from the model registry with a 10-class head (basic blocks, projection bridges: the paper's "
          "models; a 100-class head adds 5,850 parameters). He et al.'s counts are for ResNet with parameter-free "
          "option-A shortcuts, shown beside them.", "",
          Table(["Depth", *(FAMILY_TITLES.get(f, f) for f in families), "ResNet, option A", "He et al."], rows),
          ""]
    claim_rows = []
    for small, large, claimed in PARAM_CLAIMS:
        ps, pl = model_params(small, 10), model_params(large, 10)
        ours = percent_fewer(ps, pl)
        holds = abs(round(ours, 2) - claimed) <= 0.005 + 1e-9
        claim_rows.append([f"{small} vs {large}", f"{ps:,} vs {pl:,}", f"{ours:.2f}%", f"{claimed:.2f}%",
                           "yes" if holds else f"no (off by {ours - claimed:+.2f} pp)"])
    md += ["The paper's claim: Res-SE-Net-44 has 61.75% fewer parameters than ResNet-110 and 62.06% fewer than "
           "SE-ResNet-110.", "",
           Table(["Models", "Parameters", "Fewer (ours)", "Fewer (claimed)", "Claim holds"], claim_rows, "lrrrl"),
           ""]
    return Section(md, {"params.csv": param_rows})

