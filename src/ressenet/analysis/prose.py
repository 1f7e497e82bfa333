"""The findings of ``analysis.md``: one plain sentence per finding that the numbers support."""
from __future__ import annotations

from typing import Any

from ressenet.analysis.reliance import RunAnalysis
from ressenet.analysis.sites import KIND_TEXT
from ressenet.analysis.summary import target_summary, whole_target
from ressenet.experiments.stats import fmt_p, summarize

__all__ = ["group_findings", "cross_findings", "KIND_PHRASE", "CARRIER", "DEAD_STD", "GATE_ONE", "MULTIPLICITY"]

DEAD_STD = 1e-6  # a gate whose every channel varies less than this over all test images is dead (zero variance)
GATE_ONE = "an inference-time intervention on these weights, BatchNorm statistics not recalibrated"
MULTIPLICITY = "per-run intervals, not adjusted for the number of intervals"

KIND_PHRASE = {"bridge_after": "a bridge SE, after the conv", "bridge_before": "a bridge SE, before the conv",
               "identity": "an identity SE", "residual": "a residual SE", "other": "an SE block"}
# What could carry a gate that is the same for every image (eval-mode BN is a per-channel affine map).
CARRIER = {"bridge_after": "a learned per-channel scale that the bridge's batch norm could carry",
           "bridge_before": "a learned per-channel scale that the bridge's conv1x1 could carry",
           "residual": "a learned per-channel scale that the branch's last batch norm could carry",
           "identity": "a learned per-channel scale on the identity path, where no batch norm sits to carry it",
           "other": "a learned per-channel scale"}


def group_findings(g: list[RunAnalysis], blocks: list[dict[str, Any]], targets: list[dict[str, Any]],
              constant_std: float, pct: int) -> list[str]:
    """One plain sentence per finding that the data supports."""
    n = len(g)
    runs_txt = "the run" if n == 1 else f"all {n} runs"
    out = []
    const = [b for b in blocks if b["constant"]]
    for b in const:
        s = b["site"]
        flagged = [(seed, v) for seed, v in b["std_max_runs"] if v < constant_std]
        dead = [(seed, v) for seed, v in flagged if v <= DEAD_STD]
        if b["constant"] == b["n"]:
            where = f"{runs_txt} (largest per-channel std {b['std_max'].fmt(4, False)}, below {constant_std:g})"
        else:
            others = ", ".join(f"{v:.4f}" for _, v in b["std_max_runs"] if v >= constant_std)
            where = (f"{b['constant']} of {b['n']} runs (largest per-channel std "
                     f"{', '.join(f'seed {seed}: {v:.4f}' for seed, v in flagged)}, below {constant_std:g}; {others} "
                     f"in the other runs)")
        what = ("is dead (zero variance over all test images: the same vector for every image)" if len(dead) ==
                len(flagged) else "is nearly the same for every image")
        dead_note = (f", and dead (zero variance over all test images) in seed{'s' if len(dead) > 1 else ''} "
                     f"{', '.join(str(seed) for seed, _ in dead)}" if dead and len(dead) < len(flagged) else "")
        out.append(f"The gate of `{s.name}` ({KIND_PHRASE.get(s.kind, s.kind)}) {what} in {where}{dead_note}: "
                   f"{CARRIER.get(s.kind, CARRIER['other'])}.")
    if not const:
        lo = min(blocks, key=lambda b: b["std_max"].mean)
        out.append(f"No SE block has a constant gate: in every block some channel's gate varies across images with "
                   f"std {constant_std:g} or more (smallest such maximum: {lo['std_max'].fmt(3, False)}, "
                   f"`{lo['site'].name}`).")
    if len(blocks) > 1:
        hi = max(blocks, key=lambda b: b["eta2"].mean)
        lo = min(blocks, key=lambda b: b["eta2"].mean)
        out.append(f"The class explains the largest share of the gate's variance in `{hi['site'].name}` "
                   f"(η² {hi['eta2'].fmt(2, False)}) and the smallest in `{lo['site'].name}` "
                   f"(η² {lo['eta2'].fmt(2, False)}).")
    else:
        b = blocks[0]
        out.append(f"The class explains a share {b['eta2'].fmt(2, False)} of the variance of `{b['site'].name}`'s "
                   f"gate (η²).")
    tmap = {(t["target"], t["replacement"]): t for t in targets}
    whole_key = whole_target(g)
    for t in targets:
        if t["target"] == whole_key:
            out.append(_reliance_sentence(t, "every SE gate" if len(g[0].sites) > 1 else "the SE gate", pct))
    wm, wo = tmap.get((whole_key, "mean")), tmap.get((whole_key, "one"))
    if wm and wo and wo["pos"] == wo["n"] and wm["drop"].mean < 0.5 * wo["drop"].mean:
        gate = summarize([float(r.stats[s.name].mean.mean()) for r in g for s in r.sites])
        out.append(f"Keeping only each gate's test-set average (mean gate {gate.fmt(2, False)}) costs "
                   f"{wm['drop'].fmt(2, False)} points where setting every gate to 1 costs {wo['drop'].fmt(2, False)} "
                   f"({GATE_ONE}): on these trained weights the gates' input dependence matters much less than "
                   f"their average per-channel scale. Neither figure says what the blocks contribute to training: a "
                   f"network trained without them would have learned other weights.")
    singles = [t for t in targets if not t["target"].startswith("all") and t["replacement"] == "mean"]
    if len(singles) > 1:
        top = max(singles, key=lambda t: t["drop"].mean)
        one = tmap.get((top["target"], "one"))
        if any(t["pos"] for t in singles):
            runs_ = "the run" if top["n"] == 1 else f"{top['pos']} of {top['n']} runs"
            out.append(f"Of single blocks, replacing the gate of `{top['target']}` by its mean costs the most: "
                       f"{top['drop'].fmt(2, False)} points of top-1 (its {pct}% interval lies above zero in "
                       f"{runs_})" + (f"; setting its gate to 1 costs {one['drop'].fmt(2, False)}" if one else "")
                       + ".")
        else:
            out.append(f"No single block's gate, replaced by its mean, lowers top-1 beyond its {pct}% interval in any "
                       f"run (largest drop {top['drop'].fmt(2, False)} points, `{top['target']}`).")
    return out


def _reliance_sentence(t: dict[str, Any], what: str, pct: int) -> str:
    how = ("their test-set means" if what == "every SE gate" else "its test-set mean") if t["replacement"] == "mean" \
        else f"1 ({GATE_ONE})"
    head = f"Replacing {what} by {how}"
    if t["n"] == 1:
        x = t["results"][0]
        if x.lost + x.gained == 0:
            return f"{head} changes the prediction's correctness on none of the {x.n:,} test images."
        drop = f"{x.drop:.2f}".replace("-0.00", "0.00")
        ci = f"{pct}% CI {x.ci_low:+.2f} to {x.ci_high:+.2f}"
        if x.excludes_zero:
            verb = f"lowers top-1 by {drop} points" if x.drop > 0 else f"raises top-1 by {-x.drop:.2f} points"
            return f"{head} {verb} ({ci}, McNemar p = {fmt_p(x.p)})."
        return f"{head} gives a top-1 drop of {drop} points whose {ci} includes zero."
    return (f"{head} gives a top-1 drop of {t['drop'].fmt(2, False)} points (mean ± SD over runs); the drop's {pct}% "
            f"interval excludes zero in {t['excl']} of {t['n']} runs ({MULTIPLICITY}).")


def cross_findings(groups: dict[tuple, list[RunAnalysis]]) -> list[str]:
    """Sentences comparing models: only when at least two models have SE blocks."""
    if len(groups) < 2:
        return []
    parts = []
    for g in groups.values():
        t = {(x["target"], x["replacement"]): x for x in target_summary(g)}
        key = whole_target(g)
        if (key, "mean") not in t:
            continue
        kinds = sorted({KIND_TEXT.get(s.kind, s.kind) for s in g[0].sites})
        parts.append(f"{t[(key, 'mean')]['drop'].fmt(2)} points in {g[0].model} ({len(g[0].sites)} "
                     f"{' and '.join(kinds)} SE blocks)")
    if len(parts) < 2:
        return []
    return ["Input-dependent recalibration (every gate replaced by its test-set mean; top-1 drop, mean ± SD over n "
            "runs) is worth " + "; ".join(parts) + ". The models differ in their number of SE blocks and of runs, "
            "and no test compares them, so these figures are listed side by side, not ranked."]

