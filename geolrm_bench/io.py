"""Atomic file and folder writes, checksums and small JSON helpers.

Every writer in the toolkit goes through these so that an interrupted run never
leaves a half-written file or view folder behind: data is written to a temporary
sibling name and moved into place with :func:`os.replace` (atomic on POSIX).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
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


def save_npz_atomic(path: str | Path, **arrays: np.ndarray) -> Path:
    """``np.savez`` (uncompressed) of ``arrays`` to ``path`` atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes_atomic(path, buf.getvalue())


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


def ensure_output_root(root: str | Path, markers: tuple[str, ...] = (), kind: str = "output",
                       lock: bool = True) -> Path:
    """Create (or accept) ``root`` as a folder the toolkit writes files into, mark it and (with
    ``lock``) take its lock until the process exits (:func:`acquire_output_lock`, no waiting:
    callers that offer ``--wait`` pass ``lock=False`` and use :func:`output_lock`).

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
    ours = (OWNER_MARKER, LOCK_NAME, *markers)  # the lock file, too, is only ever written by the toolkit
    if real.is_dir() and any(real.iterdir()) and not any((real / m).exists() for m in ours):
        raise BenchError("exists, is not empty and was not written by geolrm-bench; "
                         "choose another output folder", root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_owner_marker(root, kind)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise BenchError(f"cannot create the output folder ({why})", root) from None
    if lock:
        acquire_output_lock(root)
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


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Check, before any work, that a file can be written at ``path`` (a name the user gave with
    ``flag``): not a folder, not a link, its parent not a file. An existing regular file is
    replaced (atomically) when the run finishes: naming it is asking for that."""
    path = Path(path)
    if path.is_symlink():
        raise BenchError(f"{flag} is a symbolic link; geolrm-bench never writes through links", path)
    if path.is_dir():
        raise BenchError(f"{flag} is a folder; give a file name (e.g. {path / 'metrics.csv'})", path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BenchError(f"{flag}: is a file, not a folder", parent)
            break
    return path


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


# --------------------------------------------------------------------------------------------
# one run per output root: a lock file with the owner's pid and host
# --------------------------------------------------------------------------------------------
LOCK_NAME = ".geolrm-bench.lock"
_HELD_LOCKS: dict[Path, int] = {}  # lock file -> depth, for this process


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this machine (a zombie or another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def _lock_is_stale(info: dict | None, path: Path) -> bool:
    """A lock of a dead process on this host (or unreadable for over a minute) is stale."""
    if info is None:
        try:
            return time.time() - path.stat().st_mtime > 60
        except OSError:
            return True
    return info.get("host") == socket.gethostname() and not pid_alive(int(info.get("pid") or 0))


def acquire_output_lock(root: str | Path, wait: bool = False, poll_s: float = 2.0,
                        log=None) -> Path:
    """Take the lock of output root ``root`` (file :data:`LOCK_NAME`: pid, host, start, command).

    Held until :func:`release_output_lock` or the process exits. Re-entrant within a process.
    A lock held by a live process (or by any process on another host): without ``wait`` a
    :class:`BenchError` saying who holds it; with ``wait``, poll until it is free. A lock left
    by a dead process of this host is taken over (the other host's must be removed by hand).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = (root / LOCK_NAME).absolute()
    if path in _HELD_LOCKS:
        _HELD_LOCKS[path] += 1
        return path
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)}
    announced = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
        except FileExistsError:
            info = _read_lock(path)
            if _lock_is_stale(info, path):
                _take_over(path, info)
                continue
            who = (f"pid {info.get('pid')} on {info.get('host')} since {info.get('started_utc')} "
                   f"({info.get('command', '')})") if info else "another run"
            if not wait:
                raise BenchError(f"in use by {who}; wait for it to finish, rerun with --wait, or use "
                                 f"another output folder (a dead run's lock on another host: delete {path})",
                                 root) from None
            if log is not None and not announced:
                log(f"waiting for {root}: in use by {who}")
                announced = True
            time.sleep(poll_s)
            continue
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise BenchError(f"cannot create the lock file ({why})", path) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        _HELD_LOCKS[path] = 1
        return path


def _take_over(path: Path, seen: dict | None) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile (then put it back)."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if _read_lock(aside) != seen:  # not the one we judged stale: restore it (never clobbering)
        with contextlib.suppress(OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def release_output_lock(path: Path) -> None:
    """Release one level of a lock from :func:`acquire_output_lock` (the file goes at depth 0)."""
    path = Path(path).absolute()
    depth = _HELD_LOCKS.get(path, 0) - 1
    if depth > 0:
        _HELD_LOCKS[path] = depth
        return
    _HELD_LOCKS.pop(path, None)
    info = _read_lock(path)
    if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def output_lock(root: str | Path, wait: bool = False, log=None) -> Iterator[Path]:
    """``with output_lock(root, wait):`` one run at a time on ``root`` (:func:`acquire_output_lock`)."""
    path = acquire_output_lock(root, wait=wait, log=log)
    try:
        yield path
    finally:
        release_output_lock(path)


@atexit.register
def _release_all_locks() -> None:
    for path in list(_HELD_LOCKS):
        _HELD_LOCKS[path] = 1
        release_output_lock(path)


# --------------------------------------------------------------------------------------------
# leftovers of crashed runs
# --------------------------------------------------------------------------------------------
STAGING_PREFIX = ".staging-"


def staging_prefix() -> str:
    """Prefix of a private staging folder of this process: ``.staging-<host>-<pid>-`` (the
    owner is then recognisable by :func:`remove_stale_staging`)."""
    host = re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname())
    return f"{STAGING_PREFIX}{host}-{os.getpid()}-"


def _folder_bytes(folder: Path) -> int:
    n = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                n += os.lstat(os.path.join(dirpath, f)).st_size
    return n


def remove_stale_staging(folder: str | Path) -> tuple[int, int]:
    """Delete ``.staging-*`` folders in ``folder`` whose owner process is gone; (count, bytes).

    Owner from the name (:func:`staging_prefix`): a dead pid of this host is gone; folders of
    older versions (no pid in the name) count as gone, as callers hold the output root's lock
    (:func:`acquire_output_lock`) so no other run can be using them; another host's are kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0, 0
    host = re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname())
    count = size = 0
    for p in folder.iterdir():
        if not p.name.startswith(STAGING_PREFIX) or p.is_symlink() or not p.is_dir():
            continue
        m = re.match(rf"^{re.escape(STAGING_PREFIX)}(.+)-(\d+)-[^-]+$", p.name)
        if m is not None:
            if m.group(1) != host or pid_alive(int(m.group(2))):
                continue
        size += _folder_bytes(p)
        shutil.rmtree(p, ignore_errors=True)
        count += 1
    return count, size


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
