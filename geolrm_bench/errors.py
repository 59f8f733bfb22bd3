"""One exception type for every user-facing failure.

The CLI prints ``str(err)`` as a single line and exits non-zero; library code raises
:class:`BenchError` with a message that names the file or object and the problem.
"""

from __future__ import annotations

from pathlib import Path


class BenchError(ValueError):
    """A failure caused by bad input or environment, with a one-line message."""

    def __init__(self, message: str, path: str | Path | None = None):
        message = _squash(message)  # always one line
        if path is not None:
            message = f"{path}: {message}"
        super().__init__(message)
        self.path = None if path is None else Path(path)


def _squash(text: object) -> str:
    """``str(text)`` with every run of whitespace (newlines included) replaced by one space."""
    return " ".join(str(text).split())


def one_line(e: BaseException, limit: int | None = 500, typed: bool | None = None) -> str:
    """A one-line description of ``e`` for records, summaries and wrapped error messages.

    ``Type: message`` when ``typed`` (default: for every exception but a :class:`BenchError`,
    whose own text already names the file and the problem), else the message alone;
    whitespace collapsed; an empty message gives the type name; cut to ``limit`` characters
    (None: no cut).
    """
    msg = _squash(e)
    if not msg:
        msg = type(e).__name__
    elif typed or (typed is None and not isinstance(e, BenchError)):
        msg = f"{type(e).__name__}: {msg}"
    return msg if limit is None else msg[:limit]
