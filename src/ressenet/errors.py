"""The exceptions that mean "the user asked for something wrong": the CLI prints them as one line."""
from __future__ import annotations

__all__ = ["RessenetError", "USER_ERRORS"]


class RessenetError(RuntimeError):
    """A run-time problem with a clear one-line cause and fix (corrupt checkpoint, non-finite loss, ...)."""


# ValueError covers ConfigError, DataError and the model zoo's option errors; FileNotFoundError a bad path.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RessenetError, FileNotFoundError, FileExistsError)
