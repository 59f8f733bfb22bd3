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
