"""Atomic writes: nothing half-written survives an exception, and files get normal permissions."""

import os
import stat

import numpy as np
import pytest

from geolrm_bench.errors import BenchError
from geolrm_bench.io import (
    OWNER_MARKER,
    atomic_dir,
    read_json,
    remove_stale_temporaries,
    save_npy_atomic,
    sha256_file,
    write_json_atomic,
)


def test_atomic_file_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = write_json_atomic(tmp_path / "a.json", {"x": 1})
        d = tmp_path / "obj"
        with atomic_dir(d) as tmp:
            (tmp / "f.txt").write_text("hi")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert stat.S_IMODE(d.stat().st_mode) == 0o755


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "views"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "00000.png").write_bytes(b"partial")
            raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_existing_only_on_success(tmp_path):
    final = tmp_path / "views"
    with atomic_dir(final) as tmp:  # the toolkit's own folder: replaceable
        (tmp / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError
    assert (final / "old.txt").read_text() == "old"
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == [OWNER_MARKER, "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["views"]


def test_npy_roundtrip_checksum_and_stale_cleanup(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(4, 3)
    p = save_npy_atomic(tmp_path / "pts.npy", a)
    np.testing.assert_array_equal(np.load(p), a)
    import hashlib

    assert sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    (tmp_path / ".pts.npy.abc.tmp.npy").write_bytes(b"x")
    (tmp_path / ".obj.xyz.tmp").mkdir()
    assert remove_stale_temporaries(tmp_path) == 2
    assert [q.name for q in tmp_path.iterdir()] == ["pts.npy"]


def test_read_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "cam.json"
    bad.write_text("{not json")
    with pytest.raises(BenchError, match="cam.json"):
        read_json(bad)
    with pytest.raises(BenchError, match="missing.json: file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "00000.json").mkdir()
    with pytest.raises(BenchError, match="00000.json: is a folder"):
        read_json(tmp_path / "00000.json")


def test_one_line_keeps_bench_errors_and_names_other_types():
    from geolrm_bench.errors import one_line

    assert one_line(BenchError("mesh is\n  empty", "a.obj")) == "a.obj: mesh is empty"
    assert one_line(KeyError("x")) == "KeyError: 'x'"
    assert one_line(RuntimeError("y" * 600)) == ("RuntimeError: " + "y" * 600)[:500]
    assert len(one_line(RuntimeError("y" * 600), limit=None)) == len("RuntimeError: ") + 600
