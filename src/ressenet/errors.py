"""The exceptions that mean "the user asked for something wrong": the CLI prints them as one line."""
from __future__ import annotations

import os
import reprlib
from pathlib import Path

__all__ = ["RessenetError", "ConfigError", "USER_ERRORS", "quote", "QUOTE_CHARS", "not_a_folder"]

QUOTE_CHARS = 80  # the most of a user's value an error message repeats
_REPR = reprlib.Repr()  # Python 3.11's takes no arguments
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 4, 6, 6, 4
_REPR.maxstring = _REPR.maxother = QUOTE_CHARS
_REPR.maxlong = 40


class RessenetError(RuntimeError):
    """A run-time problem with a clear one-line cause and fix (corrupt checkpoint, non-finite loss, ...)."""


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line naming the key and the fix."""


# ValueError covers ConfigError, DataError and the model zoo's option errors; FileNotFoundError a bad path.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RessenetError, FileNotFoundError, FileExistsError)


def quote(value: object) -> str:
    """``repr(value)`` cut to about ``QUOTE_CHARS``: bounded however large or deeply nested the value is (a YAML
    alias bomb expands to gigabytes when printed in full)."""
    text = _REPR.repr(value)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS - 3] + "..."


def not_a_folder(path: str | os.PathLike[str], flag: str = "--out") -> RessenetError | None:
    """The one-line error when the folder ``path`` (given as ``flag``) cannot be made because it, or a folder above
    it, is an existing file; None otherwise (the caller reports its own OS error)."""
    path = Path(path)
    for p in (path, *path.parents):
        try:
            if p.is_dir():
                return None
            if p.exists() or p.is_symlink():
                where = "names a file" if p == path else f"lies under {p}, which is a file"
                return RessenetError(f"{flag} {path} {where}, not a folder; choose another {flag}")
        except OSError:
            return None
    return None
