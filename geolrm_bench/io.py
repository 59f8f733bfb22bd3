"""Atomic file and folder writes, checksums and small JSON helpers.

Every writer in the toolkit goes through these so that an interrupted run never
leaves a half-written file or view folder behind: data is written to a temporary
sibling name and moved into place with :func:`os.replace` (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geolrm_bench.errors import BenchError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    """A new empty temporary file beside ``path``, with normal (umask) permissions.

    ``mkstemp`` creates files with mode 0600; the final file should read like any other,
    so the mode is reset to ``0o666 & ~umask``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(tmp)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename)."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` to ``path`` atomically (the file never exists half-written)."""
    path = Path(path)
    tmp = _tmp_sibling(path, ".npy")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success rename it to ``final``.

    On any exception the temporary folder is removed and ``final`` is untouched, so a
    reader never sees a half-written folder. With ``overwrite`` an existing ``final``
    is replaced (moved aside, then deleted, after the new one is in place).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise BenchError("exists and overwrite is off", final)
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete ``.*.tmp*`` / ``.*.old`` leftovers of interrupted atomic writes in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        if p.name.startswith(".") and (".tmp" in p.name or p.name.endswith(".old")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
    return n


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`BenchError` naming it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BenchError("file not found", path) from None
    except IsADirectoryError:
        raise BenchError("is a folder, expected a JSON file", path) from None
    except OSError as e:
        raise BenchError(f"cannot read ({e.strerror or type(e).__name__})", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"unreadable JSON ({e})", path) from None
