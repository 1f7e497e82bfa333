"""The outputs of ``ressenet analyze``: the CSV tables, the figures and ``analysis.md``.

The numbers come from :mod:`ressenet.analysis.summary`; here they become :class:`~ressenet.experiments.tables.Table`
objects (the CSV files, the page's tables) and the page's blocks, which :func:`~ressenet.experiments.tables.render`
turns into Markdown.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ressenet.analysis.figures import draw_figures
from ressenet.analysis.gates import CONSTANT_STD, QUANTILES
from ressenet.analysis.prose import DEAD_STD, GATE_ONE, cross_findings, group_findings
from ressenet.analysis.reliance import RunAnalysis
from ressenet.analysis.sites import KIND_TEXT
from ressenet.analysis.summary import block_summary, group_title, model_groups, target_summary, whole_target
from ressenet.experiments.stats import fmt_p, summarize
from ressenet.experiments.tables import Block, Table, render

__all__ = ["write_outputs"]


def _f(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "inf" if x == math.inf else ""
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def write_outputs(runs: Sequence[RunAnalysis], out: Path, *, constant_std: float = CONSTANT_STD,
                  confidence: float = 0.95, figures: bool = True) -> Path:
    """Write the CSVs, the figures and ``analysis.md`` for analysed runs; return the markdown's path."""
    groups = model_groups(runs)
    for name, table in csv_tables(runs, groups, constant_std).items():
        table.write_csv(out / name)
    figs: list[tuple[str, str]] = []
    if figures:
        figs = draw_figures(runs, groups, out)
    md = "\n".join(render(_page(runs, groups, figs, constant_std=constant_std, confidence=confidence)))
    path = out / "analysis.md"
    path.write_text(md)
    return path


def csv_tables(runs: Sequence[RunAnalysis], groups: dict[tuple, list[RunAnalysis]],
               constant_std: float) -> dict[str, Table]:
    """The CSV files by name: per run and block, per channel, per class and channel, reliance, across runs."""
    qnames = [f"q{int(round(q * 100)):02d}" if 0 < q < 1 else ("min" if q == 0 else "max") for q in QUANTILES]
    base = ["run", "model", "family", "seed", "iter"]
    gates = Table(base + ["block", "site", "stage", "index", "channels", "images", "gate_mean", "gate_std_mean",
                          "gate_std_max"] + qnames
                  + ["between_class_var", "within_class_var", "selectivity_ratio", "eta2", "constant"])
    chans = Table(base + ["block", "site", "channel", "gate_mean", "gate_std", "between_class_var",
                          "within_class_var"])
    classes = Table(base + ["block", "site", "class", "channel", "gate_mean"])
    rel = Table(base + ["target", "replacement", "blocks", "images", "intact_top1", "top1", "drop", "ci_low",
                        "ci_high", "lost", "gained", "p_mcnemar_exact", "confidence"])
    across = Table(["model", "dataset", "iters", "block", "site", "metric", "n", "mean", "std"])

    def ident(r: RunAnalysis) -> list[Any]:
        return [str(r.path), r.model, r.family or "", r.seed, r.iter]

    for r in runs:
        for s in r.sites:
            st = r.stats[s.name]
            gates.add(*ident(r), s.name, s.kind, s.stage, s.index, s.channels, st.n_images,
                      _f(float(st.mean.mean()), 6), _f(st.std_mean, 6), _f(st.std_max, 6),
                      *(_f(q, 6) for q in st.quantiles()),
                      _f(st.between_block, 6), _f(st.within_block, 6), _f(st.ratio, 6), _f(st.eta2, 6),
                      int(st.constant(constant_std)))
            for c in range(s.channels):
                chans.add(*ident(r), s.name, s.kind, c, _f(float(st.mean[c]), 6), _f(float(st.std[c]), 6),
                          _f(float(st.between[c]), 6), _f(float(st.within[c]), 6))
            for k, cname in enumerate(r.classes):
                if st.class_counts[k] == 0:
                    continue
                for c in range(s.channels):
                    classes.add(*ident(r), s.name, s.kind, cname, c, _f(float(st.class_mean[k, c]), 6))
        for row in r.reliance:
            x = row.result
            rel.add(*ident(r), row.target, row.replacement, row.blocks, x.n, _f(x.intact_top1, 4), _f(x.top1, 4),
                    _f(x.drop, 4), _f(x.ci_low, 4), _f(x.ci_high, 4), x.lost, x.gained, _f(x.p, 4), x.confidence)

    for key, g in groups.items():
        where = [key[0], g[0].dataset, g[0].iters]
        for b in block_summary(g, constant_std):
            for metric in ("gate_mean", "std_mean", "std_max", "between", "within", "ratio", "eta2", "drop_mean",
                           "drop_one"):
                a = b[metric]
                across.add(*where, b["site"].name, b["site"].kind, metric, a.n, _f(a.mean, 6), _f(a.std, 6))
        for t in target_summary(g):
            if t["target"].startswith("all"):
                a = t["drop"]
                across.add(*where, t["target"], "", f"drop_{t['replacement']}", a.n, _f(a.mean, 6), _f(a.std, 6))
        a = summarize([r.intact_top1 for r in g])
        across.add(*where, "", "", "intact_top1", a.n, _f(a.mean, 6), _f(a.std, 6))
    return {"gates.csv": gates, "gate_channels.csv": chans, "gate_class_means.csv": classes, "reliance.csv": rel,
            "across_runs.csv": across}


def _page(runs: Sequence[RunAnalysis], groups: dict[tuple, list[RunAnalysis]], figs: list[tuple[str, str]], *,
          constant_std: float, confidence: float) -> list[Block]:
    """``analysis.md`` as blocks: the runs, each model's excitation and reliance, across models, figures, methods."""
    pct = int(round(confidence * 100))
    out: list[Block] = ["# SE-block analysis", "",
                        "What the SE blocks of each run learned on its test split, and how much the network relies "
                        "on them. Definitions and methods are at the end.", "",
                        "## Runs", "", _runs_table(runs), ""]
    other = [r for r in runs if r.other_data]
    if other:
        one = len(other) == 1
        out += [f"Warning: {', '.join(f'`{r.path}`' for r in other)} {'was' if one else 'were'} analysed on other "
                f"data than {'it was' if one else 'they were'} trained on (the data fingerprints differ).", ""]
    unfinished = [r for r in runs if r.iter is not None and r.iter < r.iters]
    if unfinished:
        out += [f"{len(unfinished)} of the runs are unfinished (their last.pt is mid-run): their figures describe "
                f"a partly trained network.", ""]
    for g in groups.values():
        out += _group_blocks(g, constant_std, pct)
    if len(groups) > 1:
        out += ["## Across models", "", "Mean ± SD over each model's runs. The models differ in their number of SE "
                "blocks and of runs; no test compares them, so the rows are listed, not ranked.", "",
                _across_table(groups, constant_std), ""]
        sent = cross_findings({k: g for k, g in groups.items() if g[0].sites})
        if sent:
            out += ["### Findings", ""] + [f"- {s}" for s in sent] + [""]
    if figs:
        out += ["## Figures", ""] + [f"![{cap}]({name})\n\n{cap}\n" for name, cap in figs]
    return out + _methods(constant_std, pct)


def _runs_table(runs: Sequence[RunAnalysis]) -> Table:
    # fp32, as every figure of the page: a run trained in bf16 reports its own top-1 (summary.json) a little apart.
    t = Table(["run", "model", "family", "seed", "trained", "data", "test images", "intact top-1 (%, fp32)",
               "SE blocks"], align="lllrllrrl")
    for r in runs:
        kinds: dict[str, int] = {}
        for s in r.sites:
            kinds[s.kind] = kinds.get(s.kind, 0) + 1
        se = ", ".join(f"{v} {KIND_TEXT.get(k, k)}" for k, v in kinds.items()) or "none"
        trained = f"{r.iter:,} of {r.iters:,} it" if r.iter is not None else f"? of {r.iters:,} it"
        t.add(f"`{r.path}`", r.model, r.family_title, r.seed, trained, r.dataset_text, f"{r.n_images:,}",
              f"{r.intact_top1:.2f}", se)
    return t


def _group_blocks(g: list[RunAnalysis], constant_std: float, pct: int) -> list[Block]:
    """One model's section: excitation, quantiles (one run), reliance and findings."""
    n = len(g)
    r0 = g[0]
    top1 = summarize([r.intact_top1 for r in g]).fmt(2, False)
    out: list[Block] = [f"## {group_title(g)}", "", f"{n} run{'s' if n > 1 else ''} (seed{'s' if n > 1 else ''} "
                        f"{', '.join(str(r.seed) for r in g)}); intact test top-1 {top1} %"
                        f"{' (mean ± SD over runs)' if n > 1 else ''}.", ""]
    if not r0.sites:
        return out + [f"{r0.model} has no SE blocks (placement {r0.placement}): there are no gates to analyse and "
                      f"nothing to replace.", ""]
    blocks = block_summary(g, constant_std)
    nn_ = "" if n == 1 else f" (mean ± SD over {n} runs)"
    exc = Table(["block", "site", "C", "mean gate", "across-image std (mean / max over channels)", "between-class var",
                 "within-class var", "ratio", "η²", "constant"], align="llrrlrrrrl")
    for b in blocks:
        s = b["site"]
        exc.add(f"`{s.name}`", KIND_TEXT.get(s.kind, s.kind), s.channels, b["gate_mean"].fmt(3, False),
                f"{b['std_mean'].fmt(4, False)} / {b['std_max'].fmt(4, False)}", b["between"].fmt(3, False, "g"),
                b["within"].fmt(3, False, "g"), b["ratio"].fmt(3, False, "g"), b["eta2"].fmt(3, False),
                f"{b['constant']} of {b['n']}")
    out += [f"### Excitation{nn_}", "", exc, ""]
    if n == 1:
        qt = Table(["block", "min", "1%", "5%", "25%", "50%", "75%", "95%", "99%", "max"])
        for s in r0.sites:
            qt.add(f"`{s.name}`", *(f"{q:.3f}" for q in r0.stats[s.name].quantiles()))
        out += ["Gate quantiles over all channels and test images:", "", qt, ""]
    targets = target_summary(g)
    if targets:
        k = sum(len(x["results"]) for x in targets)
        out += ["### Reliance (top-1 drop in points; intact minus modified)", "", _reliance_table(targets, n, pct), "",
                f"Each interval is one run's {pct}% interval on the test images (McNemar's setting), not adjusted for "
                f"multiplicity: this table rests on {k} of them, and with no effect anywhere about "
                f"{k * (100 - pct) / 100:.1f} would exclude zero by chance. Setting a gate to 1 is {GATE_ONE}.", ""]
    head = [] if n == 1 else [f"± is the SD over the {n} runs (mean ± SD, n = {n}).", ""]
    sentences = group_findings(g, blocks, targets, constant_std, pct)
    return out + ["### Findings", ""] + head + [f"- {s}" for s in sentences] + [""]


def _reliance_table(targets: list[dict[str, Any]], n: int, pct: int) -> Table:
    """Drops per target: with interval and p for one run, mean ± std and how many intervals exclude 0 for several."""
    if n == 1:
        t = Table(["gate replaced in", f"by its test-set mean: drop [{pct}% CI]", "p",
                   f"by 1: drop [{pct}% CI]", "p"], align="llrlr")
    else:
        t = Table(["gate replaced in", "by its test-set mean: drop (mean ± SD)", f"runs whose {pct}% CI excludes 0",
                   "by 1: drop (mean ± SD)", f"runs whose {pct}% CI excludes 0"], align="llrlr")
    for tgt in dict.fromkeys(x["target"] for x in targets):
        cells = []
        for how in ("mean", "one"):
            x = next((x for x in targets if x["target"] == tgt and x["replacement"] == how), None)
            if x is None:
                cells += ["–", "–"]
            elif n == 1:
                r = x["results"][0]
                cells += [f"{r.drop:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]", fmt_p(r.p)]
            else:
                cells += [x["drop"].fmt(2), f"{x['excl']} of {x['n']}"]
        t.add(_target_text(tgt), *cells)
    return t


def _across_table(groups: dict[tuple, list[RunAnalysis]], constant_std: float) -> Table:
    t = Table(["model", "n", "intact top-1 (%)", "all gates → mean: drop", "all gates → 1: drop", "blocks constant",
               "mean η² (bridge SE)", "mean η² (other SE)"], align="lrrllrrr")
    for g in groups.values():
        tm = {(x["target"], x["replacement"]): x for x in target_summary(g)}
        whole = whole_target(g)
        dm = tm[(whole, "mean")]["drop"].fmt(2, False) if (whole, "mean") in tm else "–"
        do = tm[(whole, "one")]["drop"].fmt(2, False) if (whole, "one") in tm else "–"
        blocks = block_summary(g, constant_std)
        nconst = sum(b["constant"] for b in blocks)
        ntot = sum(b["n"] for b in blocks)
        e_b = summarize([r.stats[s.name].eta2 for r in g for s in r.sites if s.on_bridge])
        e_o = summarize([r.stats[s.name].eta2 for r in g for s in r.sites if not s.on_bridge])
        t.add(g[0].model, len(g), summarize([r.intact_top1 for r in g]).fmt(2, False), dm, do,
              f"{nconst} of {ntot}" if ntot else "–", e_b.fmt(3, False), e_o.fmt(3, False))
    return t


def _methods(constant_std: float, pct: int) -> list[str]:
    return ["## Definitions and methods", "",
            "- **Gate**: the SE block's sigmoid output, one value in (0, 1) per channel and image; all figures are "
            "on the run's whole test split, in eval mode, fp32.",
            "- **Quantiles** are over all channels and test images of a block, read from a 10,000-bin histogram on "
            "[0, 1] (resolution 1e-4; min and max exact).",
            "- **Selectivity**: for each channel, the variance across classes of its class-mean gate (classes "
            "weighted equally: *between-class var*) and the mean over classes of its within-class variance "
            "(*within-class var*), both averaged over the block's channels. *Ratio* = between / within; "
            "*η²* = between / (between + within), the share of the gate's variance the class explains. A gate "
            "that never moves has both at 0 and is given ratio and η² 0.",
            f"- **Constant**: no channel's across-image std of the gate reaches {constant_std:g}. Such a gate is a "
            "learned per-channel scale: in eval mode it can be folded into the batch norm (or, before the bridge "
            "conv, the conv) before it, except on an identity path where no batch norm sits. A **dead** gate is the "
            f"extreme case: zero variance over all test images (every channel's std at most {DEAD_STD:g}), the same "
            "vector for every image.",
            f"- **Reliance**: test top-1 with the named blocks' gates replaced at inference by their test-set mean "
            f"vector (the input dependence removed, the average scale kept) or by 1, through forward hooks, "
            f"against the intact network on the same images. The drop (intact minus modified, in "
            f"points) comes with a {pct}% exact conditional interval on the discordant pairs (McNemar's setting): "
            f"of the d images whose correctness changed, b lost and c gained; b ~ Binomial(d, p) gives a "
            f"Clopper-Pearson interval for p, and drop = 100 d (2p − 1) / N maps it to points. p is McNemar's "
            f"exact test (two-sided binomial test of b against d/2). The interval treats the test images as a "
            f"sample; it says nothing about seed-to-seed spread, which the across-run tables give as mean ± SD "
            f"with n. Each run's interval stands alone: none is adjusted for the number of intervals shown. Both "
            f"replacements are inference-time interventions on these weights (BatchNorm statistics not "
            f"recalibrated): the drop says how far these weights are from working "
            f"without the gates' input dependence or scale, not what the blocks contribute to training.",
            "- Channels are not aligned across seeds (any permutation of a block's channels is the same network), so "
            "per-channel and class-mean figures are per run; block-level statistics are averaged over seeds.", ""]


def _target_text(target: str) -> str:
    return f"`{target}`" if not target.startswith("all") else f"**{target}**"
