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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geolrm_bench.errors import BenchError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _raise_write_error(e: BaseException, path: Path) -> None:
    """An OS error while writing ``path`` (full disk, read-only, a folder in the way) becomes a
    one-line :class:`BenchError` naming the path; anything else is left to propagate."""
    if isinstance(e, OSError) and not isinstance(e, BenchError):
        raise BenchError(f"cannot write ({e.strerror or type(e).__name__})", path) from e


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
    try:
        tmp = _tmp_sibling(path)
    except OSError as e:
        _raise_write_error(e, path)
        raise
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _raise_write_error(e, path)
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
    try:
        tmp = _tmp_sibling(path, ".npy")
    except OSError as e:
        _raise_write_error(e, path)
        raise
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _raise_write_error(e, path)
        raise
    return path


# --------------------------------------------------------------------------------------------
# ownership: never replace what the toolkit did not write
# --------------------------------------------------------------------------------------------
OWNER_MARKER = ".geolrm-bench"  # file the toolkit writes into every output folder it owns


def write_owner_marker(folder: str | Path, kind: str = "output") -> Path:
    """Mark ``folder`` as written by geolrm-bench (a small JSON file, :data:`OWNER_MARKER`)."""
    folder = Path(folder)
    p = folder / OWNER_MARKER
    if not p.is_file():
        write_json_atomic(p, {"tool": "geolrm-bench", "kind": kind,
                              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return p


def is_toolkit_output(folder: str | Path, markers: tuple[str, ...] = ()) -> bool:
    """True when ``folder`` is a real folder (not a link) the toolkit wrote: it holds
    :data:`OWNER_MARKER`, or (outputs of older versions) every file named in ``markers``."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / OWNER_MARKER).is_file():
        return True
    return bool(markers) and all((folder / m).exists() for m in markers)


def check_replaceable(final: str | Path, overwrite: bool, markers: tuple[str, ...] = (),
                      flag: str = "--overwrite") -> bool:
    """Check that an output folder may be (re)written at ``final``; True when it exists.

    Nothing there, or an empty folder: fine. A symbolic link, a file, or a folder the toolkit
    did not write (:func:`is_toolkit_output`): :class:`BenchError` naming the path, whatever
    ``overwrite`` says. The toolkit's own earlier output: fine with ``overwrite``, else a
    BenchError telling the user to pass ``flag``.
    """
    final = Path(final)
    if final.is_symlink():
        raise BenchError("is a symbolic link; geolrm-bench never writes through or replaces links", final)
    if not final.exists():
        if final.parent.exists() and not final.parent.is_dir():
            raise BenchError("parent is a file, not a folder", final.parent)
        return False
    if not final.is_dir():
        raise BenchError("exists and is a file, not an output folder; not replacing it", final)
    if not any(final.iterdir()):
        return True
    if not is_toolkit_output(final, markers):
        raise BenchError("exists and was not written by geolrm-bench; not replacing it "
                         "(choose another output folder)", final)
    if not overwrite:
        raise BenchError(f"exists (an earlier geolrm-bench output); pass {flag} to replace it", final)
    return True


def ensure_output_root(root: str | Path, markers: tuple[str, ...] = (), kind: str = "output") -> Path:
    """Create (or accept) ``root`` as a folder the toolkit writes files into, and mark it.

    Accepted: a missing or empty folder, or one the toolkit wrote (:func:`is_toolkit_output`
    with ``markers`` naming files of older versions); ``root`` itself may be a link the user
    made to a folder. A file, or a non-empty folder of someone else's, is a BenchError naming
    it, raised before any work starts.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise BenchError("exists and is a file, not an output folder", root)
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BenchError("is a file, not a folder", parent)
            break
    real = root.resolve() if root.is_symlink() else root
    if real.is_dir() and any(real.iterdir()) and not (
            (real / OWNER_MARKER).is_file() or (markers and any((real / m).exists() for m in markers))):
        raise BenchError("exists, is not empty and was not written by geolrm-bench; "
                         "choose another output folder", root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_owner_marker(root, kind)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise BenchError(f"cannot create the output folder ({why})", root) from None
    return root


def link_outside_root(path: str | Path, root: str | Path) -> Path | None:
    """Where ``path`` really is, when it lies under ``root`` through a symbolic link (the path
    itself or a folder between ``root`` and it) that points OUTSIDE ``root``; else None.

    The toolkit reads through such links (datasets assembled from several disks are common) but
    says so, and never writes through them (:func:`check_replaceable` refuses links)."""
    path, root = Path(path), Path(root)
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    real_root = root.resolve()
    cur = root
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            target = cur.resolve()
            if target != real_root and real_root not in target.parents:
                return target
    return None


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = True, markers: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success rename it to ``final``.

    On any exception the temporary folder is removed and ``final`` is untouched, so a
    reader never sees a half-written folder. The new folder gets :data:`OWNER_MARKER` unless
    ``markers`` names the caller's own identifying files (then those recognise it).
    With ``overwrite`` an existing ``final`` is replaced (moved aside, then deleted, after the
    new one is in place) ONLY when the toolkit wrote it (:func:`check_replaceable`, with
    ``markers`` naming the files that identify older outputs); a link, a file or anyone
    else's folder is a :class:`BenchError` and is left alone.
    """
    final = Path(final)
    if final.exists() or final.is_symlink():
        check_replaceable(final, overwrite, markers)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if not markers:
            write_owner_marker(tmp)
        if final.exists() or final.is_symlink():
            check_replaceable(final, overwrite, markers)  # it may have appeared meanwhile
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
