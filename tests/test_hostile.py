"""The hostile corpus of issue 9: what a careless or malicious user (or a crash) does to the toolkit.

Each test is one defect of the issue: it failed before the fix and passes after. Rules under
test (README, "Rules for outputs and errors"): never delete or replace what the toolkit did not
write; every bad input is one line naming the file, exit 2; exit 1 only when some objects
failed and the report was written; links are read through with a warning, never written through.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from geolrm_bench import datasets
from geolrm_bench.cli import main as cli
from geolrm_bench.errors import BenchError
from geolrm_bench.io import OWNER_MARKER, atomic_dir, check_replaceable, ensure_output_root, write_json_atomic


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------------------------
# 1. reconstruct --out never replaces what the toolkit did not write
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["user_folder", "object_dir", "file", "link"])
def test_reconstruct_out_refuses_foreign_targets(tmp_path, capsys, case):
    obj = _user_folder(tmp_path / "object")
    target = {"user_folder": tmp_path / "mine", "object_dir": obj, "file": tmp_path / "notes.txt",
              "link": tmp_path / "link"}[case]
    if case == "user_folder":
        _user_folder(target)
    elif case == "file":
        target.write_text("keep me")
    elif case == "link":
        target.symlink_to(_user_folder(tmp_path / "elsewhere"), target_is_directory=True)
    rc = cli(["reconstruct", str(obj), "--preset", "tiny", "--render-views", "0", "--out", str(target),
              "--device", "cpu", "--overwrite"])
    assert rc == 2
    assert str(target) in _one_error_line(capsys)
    assert (obj / "thesis.tex").read_text() == "years of work"  # the input object is intact
    if case == "user_folder":
        assert sorted(p.name for p in target.iterdir()) == ["thesis.tex"]
    elif case == "file":
        assert target.read_text() == "keep me"
    elif case == "link":
        assert target.is_symlink() and (tmp_path / "elsewhere" / "thesis.tex").exists()


def test_toolkit_output_needs_overwrite_and_is_then_replaced(tmp_path):
    out = tmp_path / "rec"
    with atomic_dir(out) as tmp:
        (tmp / "gaussians.ply").write_text("old")
    assert (out / OWNER_MARKER).is_file()
    with pytest.raises(BenchError, match="--overwrite"):
        with atomic_dir(out, overwrite=False) as tmp:
            (tmp / "gaussians.ply").write_text("new")
    assert (out / "gaussians.ply").read_text() == "old"
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "gaussians.ply").write_text("new")
    assert (out / "gaussians.ply").read_text() == "new"
    # an empty folder holds nothing to lose; an older output is recognised by its own files
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_replaceable(empty, overwrite=False) is True
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "metadata.json").write_text("{}")
    assert check_replaceable(legacy, overwrite=True, markers=("metadata.json",)) is True
    with pytest.raises(BenchError, match="not written by geolrm-bench"):
        check_replaceable(legacy, overwrite=True)


# --------------------------------------------------------------------------------------------
# 3. zip extraction: only what the reader needs, capped, streamed with a byte counter
# --------------------------------------------------------------------------------------------
OBJ = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"


def _gso_zip(path: Path, extra: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meshes/model.obj", OBJ)
        for name, data in extra.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLRM_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_zip_unused_entries_are_not_extracted(tmp_path, _cache):
    rng = np.random.default_rng(0)
    z = _gso_zip(tmp_path / "gso" / "Obj.zip", {"blob/huge.bin": rng.bytes(3 << 20),
                                               "materials/textures/texture.png": b"\x89PNG"})
    folder = datasets.extract_zip(z)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == [OWNER_MARKER, "materials/textures/texture.png", "meshes/model.obj"]


def test_zip_caps_refuse_bombs(tmp_path, _cache, monkeypatch):
    # a highly compressible texture (a zip bomb's shape): refused by its ratio, nothing cached
    z = _gso_zip(tmp_path / "gso" / "Bomb.zip", {"materials/textures/texture.png": bytes(4 << 20)})
    with pytest.raises(BenchError, match=r"Bomb.zip: .*texture.png.*expands"):
        datasets.extract_zip(z)
    assert not any((_cache / "zips").glob("Bomb-*")) if (_cache / "zips").exists() else True
    # declared size over the entry cap
    monkeypatch.setattr(datasets, "ZIP_MAX_ENTRY_BYTES", 32)
    with pytest.raises(BenchError, match=r"model.obj.*declares 64 bytes, over the 32-byte cap"):
        datasets.extract_zip(_gso_zip(tmp_path / "gso" / "Big.zip", {}))
    # the total is counted while streaming (declared sizes can lie)
    monkeypatch.setattr(datasets, "ZIP_MAX_ENTRY_BYTES", 1 << 20)
    monkeypatch.setattr(datasets, "ZIP_MAX_TOTAL_BYTES", len(OBJ) + 10)
    z = _gso_zip(tmp_path / "gso" / "Two.zip", {"model.mtl": b"newmtl a\n" * 10})
    with pytest.raises(BenchError, match="expands to more than"):
        datasets.extract_zip(z)


# --------------------------------------------------------------------------------------------
# 5 / 9. a bad checkpoint is one line naming the file, before any Ray actor starts
# --------------------------------------------------------------------------------------------
def _tiny_pretrained(folder: Path) -> Path:
    import torch

    from geolrm_bench.model.checkpoint import save_pretrained
    from geolrm_bench.model.config import get_config
    from geolrm_bench.model.geolrm import GeoLRM

    torch.manual_seed(0)
    return save_pretrained(GeoLRM(get_config("tiny")), folder)


def test_validate_checkpoint_truncated_and_wrong_shape(tmp_path):
    import torch
    from safetensors.torch import save_file

    from geolrm_bench.model.checkpoint import from_pretrained, validate_checkpoint

    good = _tiny_pretrained(tmp_path / "good")
    assert validate_checkpoint(good) == "pretrained"
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "config.json").write_bytes((good / "config.json").read_bytes())
    data = (good / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    for fn in (validate_checkpoint, from_pretrained):
        with pytest.raises(BenchError, match=r"trunc/model.safetensors: .*truncated or corrupt"):
            fn(trunc)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_bytes((good / "config.json").read_bytes())
    save_file({"x": torch.zeros(3)}, str(wrong / "model.safetensors"))
    with pytest.raises(BenchError, match="missing key"):
        validate_checkpoint(wrong)


def _mesh_dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=(0.8, 0.6, 0.4)).export(root / "box.obj")
    return root


def test_eval_ray_bad_checkpoint_fails_before_actors(tmp_path, capsys, monkeypatch):
    from geolrm_bench.pipelines import evaluate as ev

    def no_ray(*a, **k):  # the driver must refuse before any Ray work
        raise AssertionError("Ray started with a bad checkpoint")

    monkeypatch.setattr(ev, "_run_ray", no_ray)
    ckpt = tmp_path / "bad.ckpt"
    ckpt.write_bytes(b"\x80\x04garbage that is not a checkpoint")
    rc = cli(["eval", "--dataset", "meshes", "--root", str(_mesh_dataset(tmp_path / "ds")), "--checkpoint",
              str(ckpt), "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2
    assert f"{ckpt}: cannot read checkpoint" in _one_error_line(capsys)


def test_actor_error_reason_unwraps_ansi_traceback():
    from geolrm_bench.pipelines.evaluate import actor_error_reason

    text = ("\x1b[36mray::Evaluator.__init__()\x1b[39m (pid=1, ip=1.2.3.4)\n  File \"x.py\", line 3\n"
            "geolrm_bench.errors.BenchError: /w/model.safetensors: key 'a' has shape (3,), the model "
            "expects (4,)\n\nThe actor never ran - it was cancelled")
    assert actor_error_reason(RuntimeError(text)) == ("/w/model.safetensors: key 'a' has shape (3,), "
                                                      "the model expects (4,)")


# --------------------------------------------------------------------------------------------
# 7. corrupt mesh predictions are refused by name, not scored
# --------------------------------------------------------------------------------------------
def _ascii_box_lines(tmp_path) -> list[str]:
    p = tmp_path / "ok.ply"
    trimesh.creation.box().export(p, encoding="ascii")
    return p.read_text().splitlines()


def test_mesh_prediction_nan_vertex_and_lying_header(tmp_path):
    from geolrm_bench.methods import load_prediction_mesh

    lines = _ascii_box_lines(tmp_path)
    assert len(load_prediction_mesh(tmp_path / "ok.ply").vertices) == 8
    nan = list(lines)
    nan[nan.index("end_header") + 1] = "nan 0.5 0.5"
    (tmp_path / "nan.ply").write_text("\n".join(nan) + "\n")
    assert len(trimesh.load(tmp_path / "nan.ply", force="mesh").vertices) == 7  # trimesh drops it silently
    with pytest.raises(BenchError, match=r"nan.ply: mesh has 1 non-finite"):
        load_prediction_mesh(tmp_path / "nan.ply")
    huge = [ln.replace("element vertex 8", "element vertex 2000000000") for ln in lines]
    (tmp_path / "huge.ply").write_text("\n".join(huge) + "\n")
    with pytest.raises(BenchError, match=r"huge.ply: PLY header declares 2000000000 vertex"):
        load_prediction_mesh(tmp_path / "huge.ply")


# --------------------------------------------------------------------------------------------
# 9. output paths are checked before the work starts
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--out", "--renders"])
def test_eval_output_path_that_is_a_file(tmp_path, capsys, flag, monkeypatch):
    from geolrm_bench.pipelines import evaluate as ev

    monkeypatch.setattr(ev, "prepare_object", lambda *a, **k: pytest.fail("work started"))
    f = tmp_path / "taken"
    f.write_text("x")
    args = ["eval", "--dataset", "meshes", "--root", str(_mesh_dataset(tmp_path / "ds")), "--preset", "tiny",
            "--local", "--quiet", "--out", str(tmp_path / "run")]
    rc = cli([*args, flag, str(f)])
    assert rc == 2
    assert str(f) in _one_error_line(capsys)
    assert f.read_text() == "x"


def test_eval_out_that_is_someone_elses_folder(tmp_path, capsys):
    mine = _user_folder(tmp_path / "mine")
    ds = _mesh_dataset(tmp_path / "ds")
    rc = cli(["eval", "--dataset", "meshes", "--root", str(ds), "--preset", "tiny", "--local", "--quiet",
              "--out", str(mine)])
    assert rc == 2
    assert "not written by geolrm-bench" in _one_error_line(capsys)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_full_disk_names_the_path(tmp_path, monkeypatch):
    def enospc(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(BenchError, match=r"summary.json: cannot write \(No space left on device\)"):
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_ensure_output_root_rules(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BenchError, match="file: exists and is a file"):
        ensure_output_root(tmp_path / "file")
    with pytest.raises(BenchError, match="file: is a file, not a folder"):
        ensure_output_root(tmp_path / "file" / "run")
    run = ensure_output_root(tmp_path / "run")
    (run / "summary.md").write_text("ours")
    assert ensure_output_root(run) == run  # resumable: our own root again
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    assert ensure_output_root(legacy, markers=("config.json",)) == legacy


# --------------------------------------------------------------------------------------------
# 11. one exit-code rule; unexpected failures are fatal (2), never "some objects failed" (1)
# --------------------------------------------------------------------------------------------
def test_cli_exit_codes_unexpected_and_oserror(tmp_path, capsys, monkeypatch):
    from geolrm_bench.commands import render

    def boom(args):
        raise RuntimeError("surprise")

    monkeypatch.setattr(render, "run", boom)
    assert cli(["render", str(tmp_path)]) == 2
    assert "surprise" in _one_error_line(capsys)

    def eisdir(args):
        raise IsADirectoryError(21, "Is a directory", str(tmp_path / "out"))

    monkeypatch.setattr(render, "run", eisdir)
    assert cli(["render", str(tmp_path)]) == 2
    assert _one_error_line(capsys).endswith(f"{tmp_path / 'out'}: Is a directory")


def test_eval_exit_code_one_when_some_objects_fail(tmp_path, capsys):
    ds = _mesh_dataset(tmp_path / "ds")
    (ds / "broken.obj").write_text("not a mesh\n")
    run = tmp_path / "run"
    rc = cli(["eval", "--dataset", "meshes", "--root", str(ds), "--predictions", str(tmp_path / "ds"),
              "--resolution", "32", "--local", "--quiet", "--out", str(run)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "2 of 2 objects failed" in err and f"{run}/per_object.csv" in err
    assert (run / "per_object.csv").is_file() and (run / "summary.md").is_file()


# --------------------------------------------------------------------------------------------
# 12. symbolic links: read through with a warning, never written through
# --------------------------------------------------------------------------------------------
def test_dataset_link_outside_root_is_followed_with_a_warning(tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.obj").write_bytes(OBJ)
    root = tmp_path / "scans"
    inner = root / "inner"
    inner.mkdir(parents=True)
    (inner / "model.obj").write_bytes(OBJ)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(inner, target_is_directory=True)  # inside the root: no warning
    with caplog.at_level(logging.WARNING, logger="geolrm_bench.datasets"):
        refs = datasets.list_objects("scans", root)
    assert [r.name for r in refs] == ["alias", "inner", "linked"]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "linked" in msgs[0] and str(outside) in msgs[0]
    assert len(refs[2].load().mesh.faces) == 4  # read through the link


def test_outputs_never_written_through_links(tmp_path):
    victim = _user_folder(tmp_path / "victim")
    link = tmp_path / "renders" / "obj"
    link.parent.mkdir()
    link.symlink_to(victim, target_is_directory=True)
    with pytest.raises(BenchError, match="symbolic link"):
        with atomic_dir(link) as tmp:
            (tmp / "00000.png").write_bytes(b"x")
    assert link.is_symlink() and sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]


# --------------------------------------------------------------------------------------------
# 13. headline geometry in the [-1, 1]^3 frame, metres and unit box beside it
# --------------------------------------------------------------------------------------------
def test_headline_geometry_is_not_saturated_in_metres():
    from geolrm_bench.scoring import geometry_scores

    # a 10 cm object (GSO-sized), prediction 1.5 cm off along x: in metres F-score@0.2 is 1.0
    # whatever the error; in [-1, 1]^3 the offset is 0.3 > 0.2, so the headline F-score is 0
    gt = np.array([[-0.05, 0.0, 0.0], [0.05, 0.0, 0.0]])
    to_norm = np.diag([10.0, 10.0, 10.0, 1.0])  # longest side 0.1 m -> 1
    pred = (gt + [0.0, 0.015, 0.0]) * 10.0
    out = geometry_scores(pred, gt, to_norm, unit_m=1.0, tau=0.2)
    assert out["fscore_m"] == 1.0 and out["chamfer_m"] == pytest.approx(0.015)
    assert out["chamfer_unitbox"] == pytest.approx(0.15) and out["fscore_unitbox"] == 1.0
    assert out["chamfer"] == pytest.approx(0.30) and out["fscore"] == 0.0


def test_report_names_the_frames():
    from geolrm_bench.protocol import Protocol
    from geolrm_bench.reports import PER_OBJECT_COLUMNS

    assert {"chamfer", "fscore", "chamfer_m", "fscore_m", "chamfer_unitbox", "fscore_unitbox"} <= set(
        PER_OBJECT_COLUMNS)
    text = " ".join(Protocol(num_input_views=6).describe())
    assert "[-1, 1]^3" in text and "chamfer_m" in text and "chamfer_unitbox" in text



# --------------------------------------------------------------------------------------------
# 2. render never replaces a user's folder of the same name (no metadata.json)
# --------------------------------------------------------------------------------------------
def test_render_keeps_a_users_folder_of_the_same_name(tmp_path, capsys):
    ds = _mesh_dataset(tmp_path / "ds")
    out = ensure_output_root(tmp_path / "out", lock=False)  # an earlier render's output root
    _user_folder(out / "box")  # ... where the user then made a folder named like an object
    rc = cli(["render", str(ds), "--dataset", "meshes", "--out", str(out), "--resolution", "16",
              "--views", "0", "--quiet"])
    assert rc == 1  # that object failed, index.json written
    assert sorted(p.name for p in (out / "box").iterdir()) == ["thesis.tex"]
    index = json.loads((out / "index.json").read_text())
    assert index["objects"] == [] and "not written by geolrm-bench" in index["failed"][0]["reason"]
    assert "1 of 1 object(s) failed" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["render", "occupancy-gt"])
def test_out_that_is_a_file(tmp_path, capsys, command):
    ds = _mesh_dataset(tmp_path / "ds")
    f = tmp_path / "taken"
    f.write_text("x")
    args = [command, str(ds), "--out", str(f)] if command == "render" else [
        command, "--dataset", "meshes", "--root", str(ds), "--out", str(f), "--local"]
    assert cli([*args, "--quiet"]) == 2
    assert f"{f}: exists and is a file" in _one_error_line(capsys)
    assert f.read_text() == "x"


# --------------------------------------------------------------------------------------------
# 4. a camera whose rotation is not a rotation fails that object, naming the file
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["repeated", "zero", "scaled", "reflected"])
def test_singular_camera_json_is_refused(tmp_path, bad):
    from geolrm_bench import gobjaverse, occupancy
    from geolrm_bench.cameras import gobjaverse_c2w, read_camera_json, write_camera_json

    c2w = gobjaverse_c2w([0])[0]
    path = tmp_path / "obj" / "00000" / "00000.json"
    write_camera_json(path, c2w, 0.69)
    assert gobjaverse.read_view_camera(path).c2w_opencv.shape == (4, 4)  # the real one passes
    d = json.loads(path.read_text())
    if bad == "repeated":
        d["x"] = d["y"]
    elif bad == "zero":
        d["z"] = [0.0, 0.0, 0.0]
    elif bad == "scaled":
        d["x"] = [2 * v for v in d["x"]]
    else:
        d["x"] = [-v for v in d["x"]]  # orthonormal, det -1
    path.write_text(json.dumps(d))
    read_camera_json(path)  # the plain reader still accepts it: the check is on top
    with pytest.raises(BenchError, match=r"00000.json: camera x, y, z axes are not a rotation"):
        gobjaverse.read_view_camera(path)
    with pytest.raises(BenchError, match=r"00000.json: camera"):  # occupancy reads it the same way
        occupancy.read_object_depths(tmp_path / "obj", views=[0])


# --------------------------------------------------------------------------------------------
# 6. one run per output root: a lock naming its pid and host
# --------------------------------------------------------------------------------------------
def _holder(root: Path, seconds: float):
    code = ("import sys, time; from geolrm_bench.io import acquire_output_lock as a; a(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(float(sys.argv[2]))")
    p = subprocess.Popen([sys.executable, "-c", code, str(root), str(seconds)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    return p, t0


def test_second_run_on_the_same_out_exits_2_naming_the_holder(tmp_path, capsys):
    ds = _mesh_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    p, _ = _holder(out, 30)
    try:
        rc = cli(["occupancy-gt", "--dataset", "meshes", "--root", str(ds), "--out", str(out), "--local",
                  "--quiet"])
        assert rc == 2
        err = _one_error_line(capsys)
        assert f"in use by pid {p.pid} on {socket.gethostname()}" in err and "--wait" in err
        assert not (out / "manifest.jsonl").exists()  # no work done
    finally:
        p.kill()
        p.wait()


def test_wait_for_the_lock_and_take_over_a_dead_ones(tmp_path):
    from geolrm_bench.io import LOCK_NAME, acquire_output_lock, release_output_lock

    root = tmp_path / "out"
    p, t0 = _holder(root, 1.5)
    path = acquire_output_lock(root, wait=True, poll_s=0.1)  # returns once the holder exits
    assert time.monotonic() - t0 > 1.0 and p.wait() == 0
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release_output_lock(path)
    assert not path.exists()
    # a lock left by a process that was killed (kill -9 leaves the file): taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (root / LOCK_NAME).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    path = acquire_output_lock(root)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release_output_lock(path)


# --------------------------------------------------------------------------------------------
# 8. staging folders of crashed workers are removed, with the amount said
# --------------------------------------------------------------------------------------------
def test_stale_staging_folders_are_removed(tmp_path):
    from geolrm_bench.io import remove_stale_staging, staging_prefix

    renders = tmp_path / "renders"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    mine = staging_prefix()
    crashed = renders / (mine.replace(f"-{os.getpid()}-", f"-{dead}-") + "abc")
    legacy = renders / ".staging-k2j4_x9q"  # name of older versions: no owner recorded
    live = renders / (mine + "xyz")  # this process: alive, kept
    for d, n in ((crashed, 3 << 20), (legacy, 1000), (live, 10)):
        (d / "obj" / "00000").mkdir(parents=True)
        (d / "obj" / "00000" / "00000.png").write_bytes(bytes(n))
    assert remove_stale_staging(renders) == (2, (3 << 20) + 1000)
    assert sorted(p.name for p in renders.iterdir()) == [live.name]


def test_occupancy_run_reports_removed_staging(tmp_path, capsys):
    out = ensure_output_root(tmp_path / "out", lock=False)  # an earlier run's root
    legacy = out / "renders" / ".staging-a1b2c3d4" / "obj"  # a crashed worker's (older name)
    legacy.mkdir(parents=True)
    (legacy / "00000.png").write_bytes(bytes(3 << 20))
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "broken.obj").write_text("not a mesh\n")
    rc = cli(["occupancy-gt", "--dataset", "meshes", "--root", str(ds), "--out", str(out), "--report-dir",
              str(tmp_path / "rep"), "--local", "--quiet"])
    assert rc == 1
    assert "removed 1 stale staging folder(s) of crashed workers (3.0 MiB)" in capsys.readouterr().out
    assert not (out / "renders" / ".staging-a1b2c3d4").exists()


# --------------------------------------------------------------------------------------------
# 9. --report-dir and metrics --out checked before the work
# --------------------------------------------------------------------------------------------
def test_occupancy_report_dir_that_is_a_file(tmp_path, capsys, monkeypatch):
    from geolrm_bench.pipelines import occupancy_gt

    monkeypatch.setattr(occupancy_gt, "_run_locked", lambda *a: pytest.fail("work started"))
    f = tmp_path / "report"
    f.write_text("x")
    rc = cli(["occupancy-gt", "--dataset", "meshes", "--root", str(_mesh_dataset(tmp_path / "ds")), "--out",
              str(tmp_path / "out"), "--report-dir", str(f), "--local", "--quiet"])
    assert rc == 2
    assert f"{f}: exists and is a file" in _one_error_line(capsys)


def test_metrics_images_out_folder(tmp_path, capsys, monkeypatch):
    from geolrm_bench.commands import metrics

    monkeypatch.setattr(metrics, "image_metrics_table", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "p").mkdir()
    rc = cli(["metrics", "images", str(tmp_path / "p"), str(tmp_path / "p"), "--out", str(tmp_path)])
    assert rc == 2
    assert f"{tmp_path}: --out is a folder" in _one_error_line(capsys)


# --------------------------------------------------------------------------------------------
# 10. no noise at shutdown; failures counted and pointed to, even with --quiet
# --------------------------------------------------------------------------------------------
def test_no_opengl_noise_at_exit(tmp_path):
    from PIL import Image

    # a textured mesh: freeing its GL texture during interpreter teardown printed the noise
    box = trimesh.creation.box()
    uv = np.random.default_rng(0).random((len(box.vertices), 2))
    texture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=texture)
    mesh = tmp_path / "box.obj"
    box.export(mesh)
    r = subprocess.run([sys.executable, "-m", "geolrm_bench.cli", "render", str(mesh), "--out",
                        str(tmp_path / "o"), "--resolution", "16", "--views", "0", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "box" / "metadata.json").is_file()
    for noise in ("dict_keys", "OpenGL.arrays", "Traceback"):
        assert noise not in r.stdout + r.stderr


def test_all_failed_quiet_run_says_how_many_and_where(tmp_path, capsys):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "broken.obj").write_text("not a mesh\n")
    (ds / "junk.obj").write_text("v 1 2\n")
    rc = cli(["occupancy-gt", "--dataset", "meshes", "--root", str(ds), "--out", str(tmp_path / "out"),
              "--report-dir", str(tmp_path / "rep"), "--local", "--quiet"])
    assert rc == 1  # report written, objects failed
    err = capsys.readouterr().err
    assert f"2 of 2 objects failed; reasons: {tmp_path / 'rep' / 'summary.md'}" in err
    assert "## Failures" in (tmp_path / "rep" / "summary.md").read_text()


# --------------------------------------------------------------------------------------------
# 12. rendered objects: a view folder linked outside the root is read with a warning
# --------------------------------------------------------------------------------------------
def test_rendered_view_folder_link_outside_root_warns(tmp_path, caplog):
    from geolrm_bench import gobjaverse

    root = tmp_path / "renders"
    obj = root / "obj"
    (obj / "00000").mkdir(parents=True)
    (obj / "00000" / "00000.png").write_bytes(b"")
    (obj / "00000" / "00000.json").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    (obj / "00001").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="geolrm_bench.gobjaverse"):
        assert gobjaverse.list_rendered_objects(root) == [obj]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "00001" in msgs[0] and "outside" in msgs[0]
