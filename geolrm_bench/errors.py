"""One exception type for every user-facing failure.

The CLI prints ``str(err)`` as a single line and exits non-zero; library code raises
:class:`BenchError` with a message that names the file or object and the problem.
"""

from __future__ import annotations

from pathlib import Path


class BenchError(ValueError):
    """A failure caused by bad input or environment, with a one-line message."""

    def __init__(self, message: str, path: str | Path | None = None):
        message = " ".join(str(message).split())  # always one line
        if path is not None:
            message = f"{path}: {message}"
        super().__init__(message)
        self.path = None if path is None else Path(path)


def one_line(e: BaseException, limit: int | None = 500) -> str:
    """A one-line description of ``e`` for records and summaries.

    A :class:`BenchError`'s own text (it already names the file and the problem), else
    ``Type: message``; whitespace collapsed; cut to ``limit`` characters (None: no cut).
    """
    msg = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
    msg = " ".join(msg.split())
    return msg if limit is None else msg[:limit]
