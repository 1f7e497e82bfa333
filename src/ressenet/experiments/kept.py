"""A grid's new runs against the runs of the same grid kept in the repository (``results/<preset>/``), cell by cell:
whether each family agrees within its seed spread, and which recorded set-up facts differ (precision, device, torch
build, threads, data)."""
from __future__ import annotations

from pathlib import Path

from ressenet.experiments.runs import FinishedRun, collect_runs
from ressenet.experiments.stats import fmt_comparison, fmt_mean_std, fmt_num, summarize, welch
from ressenet.experiments.tables import Block, Table

__all__ = ["kept_comparison", "SETUP_KEYS"]

# Recorded facts (config.yaml's meta) that change the numbers a seed gives, in words.
SETUP_KEYS = {"precision": "precision", "device_name": "device", "torch": "torch build", "threads": "threads",
              "compile": "compiled", "data_fingerprint": "data fingerprint"}


def _facts(runs: list[FinishedRun], key: str) -> str:
    return ", ".join(sorted({str(r.meta.get(key, "not recorded")) for r in runs}))


def kept_comparison(runs: list[FinishedRun], kept_dir: str | Path) -> list[Block]:
    """A report section comparing ``runs`` with the finished runs of the same names under ``kept_dir``."""
    kept_dir = Path(kept_dir)
    kept = {Path(r.rel).name: r for r in collect_runs(kept_dir)[0]}
    pairs = [(r, kept[Path(r.rel).name]) for r in sorted(runs, key=lambda r: r.rel) if Path(r.rel).name in kept]
    head: list[Block] = [f"## Against the kept runs in `{kept_dir}`", ""]
    if not pairs:
        return head + [f"No run here has a namesake in `{kept_dir}`, so nothing is compared.", ""]
    rows = [[f"`{Path(a.rel).name}`", fmt_num(a.value("test_top1")), fmt_num(b.value("test_top1")),
             fmt_num((a.value("test_top1") or 0) - (b.value("test_top1") or 0), signed=True),
             f"{a.meta.get('precision', '?')} / {b.meta.get('precision', '?')}"] for a, b in pairs]
    models = sorted({a.model for a, _ in pairs})
    fam_rows, differ = [], []
    for m in models:
        ours = [a.value("test_top1") for a, _ in pairs if a.model == m]
        theirs = [b.value("test_top1") for b in kept.values() if b.model == m]
        c = welch([v for v in ours if v is not None], [v for v in theirs if v is not None])
        verdict = ("cannot tell (fewer than 2 runs)" if not c.tested else
                   "agree" if c.ci_low <= 0 <= c.ci_high else "differ")
        if verdict == "differ":
            differ.append(m)
        fam_rows.append([m, fmt_mean_std(summarize(ours)), fmt_mean_std(summarize(theirs)), fmt_comparison(c),
                         verdict])
    mine = [a for a, _ in pairs]
    other = list(kept.values())
    setup = [f"{word}: {_facts(mine, key)} here, {_facts(other, key)} in `{kept_dir}`"
             for key, word in SETUP_KEYS.items() if _facts(mine, key) != _facts(other, key)]
    agree = (f"**All {len(models)} models agree with the kept runs within their seed spread**" if not differ else
             f"**{len(differ)} of {len(models)} models differ from the kept runs beyond their seed spread** "
             f"({', '.join(differ)})")
    why = (f" The set-ups differ, which changes what a seed gives: {'; '.join(setup)}." if setup else
           " The recorded set-ups are the same (precision, device, torch build, threads, data).")
    return head + [
        f"{len(pairs)} run(s) here have a namesake in `{kept_dir}`; final test top-1 (%), the same seed side by side:",
        "", Table(["Run", "Here", "Kept", "Δ", "Precision (here / kept)"], rows, "lrrrl"), "",
        "Each model over its seeds (Welch's 95% interval of here minus kept; \"agree\" when it holds zero):", "",
        Table(["Model", "Here", "Kept", "Δ [95% CI]", "Within the seed spread?"], fam_rows, "lrrrl"), "",
        agree + "." + why, ""]
