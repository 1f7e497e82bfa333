"""Name suggestions for one-line errors: ``suggest("resnet21", list_models())`` -> ``"did you mean 'resnet20'? "``.

One helper for every name a user types (model, dataset, device, precision, ...), so that each error names the
closest valid choice the same way.
"""
from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable

__all__ = ["suggest", "closest", "natural_key"]


def closest(name: object, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The valid choice nearest to ``name`` (case-insensitive difflib ratio; ties go to the longer common prefix,
    then to the earlier choice: ``resnet21`` -> ``resnet20``, not ``resnet32``), or None when none is close."""
    by_folded: dict[str, str] = {}
    for c in choices:
        by_folded.setdefault(str(c).lower(), str(c))
    text = str(name).strip().lower()
    if text in by_folded:  # only the case differs
        return by_folded[text]
    best, best_key = None, None
    for order, folded in enumerate(by_folded):
        m = difflib.SequenceMatcher(None, text, folded)
        if m.real_quick_ratio() < cutoff or m.quick_ratio() < cutoff:
            continue
        ratio = m.ratio()
        if ratio < cutoff:
            continue
        key = (ratio, len(os.path.commonprefix([text, folded])), -order)
        if best_key is None or key > best_key:
            best, best_key = folded, key
    return by_folded[best] if best is not None else None


def suggest(name: object, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """``"did you mean 'X'? "`` for the closest valid choice X, or ``""`` when none is close (meant to be spliced
    into a one-line error message before the list of valid choices)."""
    best = closest(name, choices, cutoff=cutoff)
    return f"did you mean {best!r}? " if best is not None else ""


def natural_key(name: str) -> tuple:
    """Sort key that orders names by their numbers, ignoring case: resnet20 < resnet110 < resnet1202,
    img9.png < img10.png. Model names, run directories and image files all sort with it."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name))
