"""The README's generated block: the lines between ``<!-- findings:start -->`` and ``<!-- findings:end -->``.

Only the block is rewritten; the prose around it is left as it is. The markers count only on lines of their own
(prose may quote them), exactly one pair, start first.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ressenet.files import atomic_write_text
from ressenet.experiments.contrasts import Contrast, mean_sd
from ressenet.experiments.paper import paper_result
from ressenet.experiments.runs import Group
from ressenet.experiments.stats import fmt_num, fmt_p
from ressenet.experiments.tables import Block, render

__all__ = ["check_readme", "refresh_readme", "rel", "block_lines", "README_START", "README_END"]

README_START, README_END = "<!-- findings:start -->", "<!-- findings:end -->"


def rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base``, for a link."""
    return os.path.relpath(Path(path).resolve(), Path(base).resolve())


def block_lines(lines: list[str], readme: Path, start: str = README_START, end: str = README_END,
                where: str = "where the findings summary goes") -> tuple[int, int]:
    """(start, end) line indices of the one ``start`` ... ``end`` marker pair."""
    empty = start + end  # an empty block on one line
    starts = [i for i, ln in enumerate(lines) if ln.strip() in (start, empty)]
    ends = [i for i, ln in enumerate(lines) if ln.strip() in (end, empty)]
    if not starts or not ends:
        raise ValueError(f"{readme} has no {start} ... {end} block; add the two markers, each on a line of its own, "
                         f"{where}")
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"{readme} has {len(starts)} {start} and {len(ends)} {end} line(s)"
                         f"{', the end first' if len(starts) == len(ends) == 1 else ''}: which block to replace is "
                         f"ambiguous; keep one start line followed by one end line")
    return starts[0], ends[0]


def check_readme(readme: Path, out_md: Path) -> tuple[list[str], int, int]:
    """The README's lines and its block's (start, end) line indices; called before anything is written.

    Raises:
        ValueError: the README is the findings page itself, is unreadable, or lacks exactly one pair of markers.
    """
    if Path(readme).resolve() == Path(out_md).resolve():
        raise ValueError(f"--findings and --readme both name {readme}: the page would replace the README; give the "
                         f"findings page its own file, e.g. --findings docs/findings.md")
    try:
        text = Path(readme).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"README {readme} cannot be read ({type(e).__name__}); check --readme") from None
    lines = text.splitlines(keepends=True)
    return (lines, *block_lines(lines, readme))


def refresh_readme(readme: Path, groups: Sequence[Group], tests: Sequence[Contrast], out_md: Path,
                   extra: Sequence[Block] = ()) -> None:
    """Replaces the README's block: what is known first (the shorter schedules' verdict tables, ``extra``), then one
    sentence on the paper's full protocol; per-model tables stay on the findings page."""
    lines, start, end = check_readme(readme, out_md)
    page = rel(out_md, readme.parent)
    block: list[Block] = [README_START, ""] + list(extra)
    have = []
    for g in sorted(groups, key=lambda g: (g.label, g.depth or 0, g.family or "")):
        pr = paper_result(g.family or "", g.depth or 0, g.compare_to) if g.compare_to else None
        have.append(f"{g.model} {mean_sd(g.stat('test_top1'))} (n = {g.n}{f'; paper {pr.top1:.2f}' if pr else ''})")
    tested = [t for t in tests if t.tested]
    if not tested:
        block += ["**At the paper's full protocol (64,000 iterations) there is no answer yet:** no comparison has two "
                  "seeds of both sides" + (f"; finished: {', '.join(have)}" if have else "") + f". What exists, and "
                  f"what it costs to fill in: [findings page]({page})."]
    else:
        parts = [f"{t.title} at depth {t.depth} on {t.label}: {fmt_num(t.paired.diff, 2, True)} points "
                 f"[{fmt_num(t.paired.ci_low, 2, True)}, {fmt_num(t.paired.ci_high, 2, True)}] over {t.paired.n_a} pairs, "
                 f"Holm p={fmt_p(t.holm_p)}" for t in tested]
        block += ["**At the paper's full protocol**, paired t-test by seed, 95% intervals: " + "; ".join(parts)
                  + f". Details: [findings page]({page})."]
    while block[-1] == "":
        block.pop()
    block += ["", README_END]
    newline = "\n" if lines[end].endswith("\n") else ""
    atomic_write_text(readme, "".join(lines[:start]) + "\n".join(render(block)) + newline + "".join(lines[end + 1:]))
