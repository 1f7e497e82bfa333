"""The comparisons of the findings page: which differences are tested, how, and how they are worded.

A :class:`Contrast` is one difference ``a − b`` of final test top-1 at one depth and dataset: the paired t-test over
the seeds both sides have (the prespecified primary test: members with one seed share initialisation order and
batches), Welch's test beside it (secondary: it ignores the pairing), Holm's adjustment over every contrast of a
section, and the paper's printed difference where it has one. Intervals are per-comparison 95% intervals.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ressenet.experiments.paper import paper_result
from ressenet.experiments.runs import COMPARISONS, FAMILY_TITLES, Group
from ressenet.experiments.stats import Comparison, Summary, fmt_mean_std, fmt_num, fmt_p, holm, paired, welch
from ressenet.experiments.tables import Block, Table

__all__ = ["Contrast", "contrasts", "with_holm", "contrast_table", "interval_sentence", "comparison_sentence",
           "verdict_table", "seed_values", "table", "mean_sd", "title_of", "PRIMARY_TEST", "ALPHA"]

ALPHA = 0.05
PRIMARY_TEST = ("Primary test (prespecified): the paired t-test of the difference over the seeds both sides "
                "have (runs with one seed share initialisation order and batches), with its per-comparison 95% "
                "interval; Holm's adjustment runs over every comparison of the section, so a \"difference\" survives "
                "their number. Welch's test, which ignores the pairing, is secondary and shown beside it.")


@dataclass(frozen=True)
class Contrast:
    """One tested difference ``a − b`` (points of final test top-1) at one dataset and depth."""

    label: str  # data label, e.g. "CIFAR-10 (JPEG copy)"
    title: str
    depth: int
    family_a: str
    family_b: str
    paired: Comparison
    welch: Comparison
    paper_diff: float | None = None  # the paper's printed a − b (its single best-on-test runs), when it has both
    holm_p: float = math.nan  # Holm-adjusted paired p over the section
    holm_welch_p: float = math.nan

    @property
    def tested(self) -> bool:
        return self.paired.tested

    @property
    def shown(self) -> bool:
        """A difference after Holm's adjustment (paired test)."""
        return self.tested and self.holm_p < ALPHA


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[Block]:
    """A table of the findings page (every column left-aligned), as a block rendered when the page is written."""
    return [Table(headers, list(rows), align="l" * len(headers))]


def mean_sd(s: Summary) -> str:
    """``83.98 ± 0.32`` (mean ± SD over seeds); one seed: the value alone; none: ``–``."""
    return f"{s.mean:.2f}" if s.n == 1 else fmt_mean_std(s)


def seed_values(g: Group | None) -> dict[int, float]:
    """Final test top-1 by seed."""
    if g is None:
        return {}
    return {r.seed: v for r in g.runs if r.seed is not None and (v := r.value("test_top1")) is not None}


def _pairs() -> list[tuple[str, str, str]]:
    """(a, b, title): the paper's comparisons, and each ablation of Res-SE-Net also against ResNet."""
    out = [(a, b, title) for a, b, title, _ in COMPARISONS]
    for a, b, title, printed in COMPARISONS:
        if b == "res_se_net" and printed is None and a.startswith("res_se_net_"):
            out.append((a, "resnet", f"{title.rsplit(' minus ', 1)[0]} minus ResNet"))
    return out


def contrasts(groups: Sequence[Group]) -> list[Contrast]:
    """Every comparison with finished runs on both sides, per dataset and depth, Holm-adjusted together."""
    found: list[Contrast] = []
    by = {(g.label, g.family, g.depth): g for g in groups if g.family and g.depth}
    for label in sorted({g.label for g in groups}):
        depths = sorted({d for (lab, _, d) in by if lab == label})
        for fa, fb, title in _pairs():
            for d in depths:
                a, b = by.get((label, fa, d)), by.get((label, fb, d))
                if a is None or b is None:
                    continue
                pa = paper_result(fa, d, a.compare_to) if a.compare_to else None
                pb = paper_result(fb, d, b.compare_to) if b.compare_to else None
                found.append(Contrast(label, title, d, fa, fb, paired(seed_values(a), seed_values(b)),
                                      welch(a.values("test_top1"), b.values("test_top1")),
                                      pa.top1 - pb.top1 if pa and pb else None))
    return with_holm(found)


def with_holm(cs: Sequence[Contrast]) -> list[Contrast]:
    """The contrasts with Holm's adjustment over all of them (paired and Welch p-values separately)."""
    hp, hw = holm([c.paired.p for c in cs]), holm([c.welch.p for c in cs])
    return [replace(c, holm_p=p, holm_welch_p=w) for c, p, w in zip(cs, hp, hw)]


def _span(c: Comparison) -> str:
    return f"{fmt_num(c.diff, 2, True)} [{fmt_num(c.ci_low, 2, True)}, {fmt_num(c.ci_high, 2, True)}]"


def _cell(c: Comparison, p_adj: float) -> str:
    if math.isnan(c.diff):
        return "–"
    if not c.tested:
        return f"{fmt_num(c.diff, 2, True)} (not testable: n={min(c.n_a, c.n_b)})"
    return f"{_span(c)}, p={fmt_p(c.p)}, Holm p={fmt_p(p_adj)}"


def contrast_table(cs: Sequence[Contrast]) -> list[Block]:
    """The contrasts as a table: paired (primary) and Welch (secondary), the paper's printed difference."""
    rows = [[c.title, c.depth, c.paired.n_a, _cell(c.paired, c.holm_p),
             "–" if c.paper_diff is None else fmt_num(c.paper_diff, 2, True), _cell(c.welch, c.holm_welch_p),
             "not testable" if not c.tested else ("yes" if c.shown else "no")] for c in cs]
    n = sum(c.tested for c in cs)
    head = [f"Differences in final test top-1 (percentage points) with per-comparison 95% intervals (not "
            f"simultaneous); Holm's adjustment runs over all {n} tested comparisons of this section.", ""]
    return head + table(["comparison", "depth", "pairs", "paired by seed (primary)", "paper (printed)",
                         "Welch (secondary)", "difference after Holm?"], rows)


def interval_sentence(c: Contrast) -> str:
    """What the paired interval says: its span, whether it excludes zero, and where the paper's number falls."""
    p = c.paired
    if not c.tested:
        pairs = f"{p.n_a} pair{'' if p.n_a == 1 else 's'}"
        return f"{c.title} at depth {c.depth}: {fmt_num(p.diff, 2, True)} points, not testable ({pairs})"
    lo, hi = fmt_num(p.ci_low, 2, True), fmt_num(p.ci_high, 2, True)
    text = (f"{c.title} at depth {c.depth} ({p.n_a} pairs): {fmt_num(p.diff, 2, True)} points, interval "
            f"[{lo}, {hi}], Holm p={fmt_p(c.holm_p)}; the interval excludes differences below {lo} and above {hi}")
    text += ", and zero" if p.ci_low > 0 or p.ci_high < 0 else " but not zero"
    if c.paper_diff is not None:
        paper = fmt_num(c.paper_diff, 2, True)
        if c.paper_diff > p.ci_high:
            text += f"; the paper's {paper} lies above its upper end"
        elif c.paper_diff < p.ci_low:
            text += f"; the paper's {paper} lies below its lower end"
        else:
            text += f"; the paper's {paper} lies inside it"
    if (p.ci_low > 0 or p.ci_high < 0) and not c.shown:
        text += " (no difference after Holm's adjustment)"
    return text


def title_of(family: str | None) -> str:
    """A family's title (the families table), or the key itself."""
    return FAMILY_TITLES.get(family or "", family or "?")


_SEEDS_TAIL = "Where no difference is shown, either sign remains possible at this number of seeds"
_TAIL = f"{_SEEDS_TAIL}; none of this carries over to the paper's full protocol."


def _verdict(c: Contrast) -> str:
    """"shown" (after Holm), "unadjusted" (only the unadjusted interval excludes zero) or "none"."""
    return "shown" if c.shown else "unadjusted" if c.paired.ci_low > 0 or c.paired.ci_high < 0 else "none"


def _headline(tested: Sequence[Contrast], tag: str) -> str:
    if not tested:
        return (f"**No answer yet at this schedule** ({tag}): no comparison has two seeds of both sides; the grid "
                f"is still training.")
    shown = sum(c.shown for c in tested)
    return ("**At this schedule no comparison shows a difference** (paired by seed, 95% intervals, Holm-adjusted)"
            if not shown else f"**At this schedule, {shown} of {len(tested)} comparisons show a difference** "
                              f"(paired by seed, 95% intervals, Holm-adjusted)")


def comparison_sentence(cs: Sequence[Contrast], tag: str, *, full_protocol: bool = False) -> str:
    """One sentence that claims no more than the paired intervals allow, and stays at this schedule (at the paper's
    full protocol when ``full_protocol``). ``cs`` come from :func:`contrasts` (Holm-adjusted together)."""
    tested = [c for c in cs if c.tested]
    if not tested:
        return _headline(tested, tag)
    parts = []
    for c in tested:
        text = f"{c.title} at depth {c.depth} ({c.paired.n_a} pairs): {_span(c.paired).replace(' [', ' points [', 1)}"
        parts.append(f"{text}, Holm p={fmt_p(c.holm_p)}" + {
            "shown": ", a difference at this schedule",
            "unadjusted": f": the unadjusted interval excludes zero, but the difference does not survive the "
                          f"adjustment for {len(tested)} comparisons, so no difference is shown",
            "none": ", no difference shown"}[_verdict(c)])
    return f"{_headline(tested, tag)}: " + "; ".join(parts) + ". " + (f"{_SEEDS_TAIL}." if full_protocol else _TAIL)


def verdict_table(cs: Sequence[Contrast], tag: str, holm_over: int | None = None) -> list[Block]:
    """:func:`comparison_sentence` as a headline, a short table and its closing clause (the README's block);
    ``holm_over``: the number of comparisons Holm's adjustment ran over, when the table shows only some."""
    tested = [c for c in cs if c.tested]
    if not tested:
        return [_headline(tested, tag)]
    rows = [[c.title, c.depth, c.paired.n_a, _span(c.paired), fmt_p(c.holm_p),
             "–" if c.paper_diff is None else fmt_num(c.paper_diff, 2, True),
             {"shown": "yes", "unadjusted": "no (only before Holm)", "none": "no"}[_verdict(c)]] for c in tested]
    return ([_headline(tested, tag) + ":", ""]
            + table(["comparison", "depth", "pairs", "difference (points) [95% CI]", "Holm p", "paper (printed)",
                     "difference shown?"], rows)
            + ["", _TAIL + (f" Holm's adjustment ran over all {holm_over} comparisons of the findings page."
                            if holm_over else "")])
