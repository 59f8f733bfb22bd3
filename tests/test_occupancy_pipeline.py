"""The occupancy-gt pipeline: Ray tasks, manifest and resume, failures as records, report.

Numbers in the report are checked against an independent recount from the written
``pts.npy`` files; voxel positions against the analytic shapes the objects were made from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import trimesh

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

from conftest import needs_renderer  # noqa: E402

from geolrm_bench.pipelines import occupancy_gt as pipe  # noqa: E402

R = 128
REPO = Path(__file__).resolve().parents[1]




def _make_meshes(root: Path, n_spheres: int = 1) -> Path:
    """A 'meshes' dataset: sphere(s) of radius 2 (-> 0.5 normalised), a 3x2x1 box, a corrupt OBJ."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_spheres):
        trimesh.creation.icosphere(subdivisions=3, radius=2.0).export(root / f"sphere{i}.ply")
    trimesh.creation.box(extents=(3.0, 2.0, 1.0)).export(root / "box.stl")
    (root / "bad.obj").write_text("v 0 0 0\nthis is not an obj\nf 1 2 9\n")
    return root


def _manifest_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _centres(pts: np.ndarray) -> np.ndarray:
    return pts.astype(np.float64) / R - 0.5  # voxel centre of index k: k / R - 0.5 (index rule)


def _check_report_against_pts(res: pipe.RunResult) -> None:
    """Report numbers == an independent recount from each object's pts.npy."""
    df = pd.read_csv(res.report_files["summary_csv"])
    assert res.report_files["summary_md"].is_file() and "5%" in res.report_files["summary_md"].read_text()
    for row in df[df["status"] == "done"].itertuples():
        pts = np.load(res.out / "occupancy" / row.object / "pts.npy")
        n = len(np.unique(pts, axis=0))
        ext = pts.max(0).astype(int) - pts.min(0).astype(int) + 1
        assert row.voxels == n == len(pts)
        assert row.grid_fraction == pytest.approx(n / R**3, rel=1e-12)
        assert row.bbox_voxels == int(np.prod(ext))
        assert row.bbox_fraction == pytest.approx(n / np.prod(ext), rel=1e-12)
    dist = pd.read_csv(res.report_files["distribution_csv"], index_col=0)
    done = df[df["status"] == "done"]
    assert dist.loc["voxels", "median"] == pytest.approx(done["voxels"].median())
    assert dist.loc["grid_fraction", "mean"] == pytest.approx(done["grid_fraction"].mean())


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    ray, own = pipe._init_ray(pipe.OccupancyGTConfig(num_cpus=2))
    yield ray
    if own:
        ray.shutdown()


@needs_renderer
def test_pipeline_on_ray_resume_and_failures(tmp_path, ray_cluster):
    root = _make_meshes(tmp_path / "ds")
    cfg = pipe.OccupancyGTConfig(dataset="meshes", root=root, out=tmp_path / "out", render_resolution=64,
                                 report_dir=tmp_path / "rep1", progress=False)
    res = pipe.run_occupancy_gt(cfg)
    assert res.counts == {"done": 2, "failed": 1, "skipped": 0}
    by = {r["object"]: r for r in res.records}
    assert by["bad"]["status"] == "failed" and "bad" in by["bad"]["error"]
    assert "\n" not in by["bad"]["error"]
    assert by["sphere0"]["status"] == by["box"]["status"] == "done"
    assert by["sphere0"]["peak_rss_mb"] > 0
    # each worker's thread pools sized to its CPUs (cpus_per_task = 1), set through Ray's runtime_env
    assert by["sphere0"]["worker_threads"] == by["box"]["worker_threads"] == "1"
    assert pipe.worker_env(cfg)["OMP_NUM_THREADS"] == pipe.worker_env(cfg)["LP_NUM_THREADS"] == "1"
    lines = _manifest_lines(res.manifest)
    assert sorted(x["object"] for x in lines) == ["bad", "box", "sphere0"]

    sphere = np.load(tmp_path / "out/occupancy/sphere0/pts.npy")
    box = np.load(tmp_path / "out/occupancy/box/pts.npy")
    assert sphere.dtype == box.dtype == np.uint8 and sphere.shape[1] == 3
    assert (tmp_path / "out/renders/sphere0/00039/00039_nd.exr").is_file()
    # geometry: voxel centres on the normalised shapes (radius 0.5; box 1 x 2/3 x 1/3)
    r = np.linalg.norm(_centres(sphere), axis=1)
    assert np.all(np.abs(r - 0.5) <= 1.5 / R)
    half = np.array([0.5, 1 / 3, 1 / 6])
    q = np.abs(_centres(box))
    outside = np.linalg.norm(np.maximum(q - half, 0), axis=1)
    inside = np.min(half - q, axis=1)
    assert np.all(np.where(outside > 0, outside, inside) <= 1.5 / R)
    _check_report_against_pts(res)

    # rerun: finished objects skipped, the bad one tried (and recorded) again
    sphere_bytes = (tmp_path / "out/occupancy/sphere0/pts.npy").read_bytes()
    res2 = pipe.run_occupancy_gt(pipe.OccupancyGTConfig(**{**cfg.__dict__, "report_dir": tmp_path / "rep2"}))
    assert res2.counts == {"done": 0, "failed": 1, "skipped": 2}
    _check_report_against_pts(res2)

    # a corrupted pts.npy is redone (renders reused), byte-identical; a deleted one too
    p = tmp_path / "out/occupancy/sphere0/pts.npy"
    p.write_bytes(sphere_bytes[:-7] + b"garbage")
    (tmp_path / "out/occupancy/box/pts.npy").unlink()
    res3 = pipe.run_occupancy_gt(pipe.OccupancyGTConfig(**{**cfg.__dict__, "report_dir": tmp_path / "rep3"}))
    assert res3.counts == {"done": 2, "failed": 1, "skipped": 0}
    assert p.read_bytes() == sphere_bytes
    assert not any(r.get("rendered") for r in res3.records)
    np.testing.assert_array_equal(np.load(tmp_path / "out/occupancy/box/pts.npy"), box)
    _check_report_against_pts(res3)


class _CrashOnceRef:
    """An ObjectRef stand-in whose first load() kills its worker process (a system failure)."""

    def __init__(self, mesh_path: Path, marker: Path):
        self.name, self.path, self.marker = mesh_path.stem, mesh_path, marker

    def load(self):
        if not self.marker.exists():
            self.marker.touch()
            os._exit(1)  # the worker dies mid-task, as in an OOM kill
        from geolrm_bench.datasets import load_mesh_file

        return load_mesh_file(self.path)


@needs_renderer
def test_crashed_worker_is_retried_then_recorded(tmp_path, ray_cluster, monkeypatch):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    root = _make_meshes(tmp_path / "ds")
    marker = tmp_path / "crashed-once"
    items = [pipe.WorkItem("sphere0", ref=_CrashOnceRef(root / "sphere0.ply", marker))]
    monkeypatch.setattr(pipe, "plan_items", lambda cfg: items)
    cfg = pipe.OccupancyGTConfig(dataset="meshes", root=root, out=tmp_path / "out", render_resolution=32,
                                 report_dir=tmp_path / "rep", progress=False, max_retries=1)
    res = pipe.run_occupancy_gt(cfg)
    assert marker.exists() and res.counts == {"done": 1, "failed": 0, "skipped": 0}

    # without retries the crash becomes a failed record, and the run goes on
    marker.unlink()
    cfg.out, cfg.max_retries = tmp_path / "out2", 0
    res = pipe.run_occupancy_gt(cfg)
    assert res.counts == {"done": 0, "failed": 1, "skipped": 0}
    assert "\n" not in res.records[0]["error"] and res.records[0]["error"]


def _write_rendered_sphere(obj: Path, H: int = 96) -> None:
    """A GObjaverse-format object folder with analytic (ray-cast) depth of a radius-0.4 sphere."""
    from geolrm_bench import cameras, gobjaverse

    c2w = cameras.gobjaverse_c2w()
    f = 1.0 / (2 * np.tan(np.deg2rad(39.6) / 2))
    v, u = np.mgrid[0:H, 0:H]
    dirs_cam = np.stack([(u + 0.5 - H / 2) / (f * H), (v + 0.5 - H / 2) / (f * H), np.ones((H, H))], -1)
    for i in range(40):
        o, d = c2w[i, :3, 3], dirs_cam @ c2w[i, :3, :3].T  # t along d is z-depth
        a, b, c = (d * d).sum(-1), 2 * d @ o, o @ o - 0.4**2
        disc = b * b - 4 * a * c
        t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0).astype(np.float32)
        rgba = np.zeros((H, H, 4), np.uint8)
        rgba[..., 3] = (t > 0) * 255
        gobjaverse.write_view(obj, i, rgba, c2w[i], np.zeros((H, H, 3), np.float32), t)


def test_ray_workers_in_another_working_directory_use_the_drivers_paths(tmp_path, ray_cluster, monkeypatch):
    """Relative --root/--out name the driver's folders even when the Ray workers run elsewhere
    (a cluster started with ``ray start`` in another directory): here the workers' cwd is the one
    the module's Ray was started in, and the driver moves to tmp_path."""
    pytest.importorskip("OpenEXR")
    _write_rendered_sphere(tmp_path / "renders" / "ball", H=32)
    monkeypatch.chdir(tmp_path)
    cfg = pipe.OccupancyGTConfig(dataset=None, root=Path("renders"), out=Path("gt_out"),
                                 report_dir=tmp_path / "rep", progress=False)
    res = pipe.run_occupancy_gt(cfg)
    assert res.counts == {"done": 1, "failed": 0, "skipped": 0}, res.records
    assert (tmp_path / "gt_out" / "occupancy" / "ball" / "pts.npy").is_file()
    res2 = pipe.run_occupancy_gt(pipe.OccupancyGTConfig(**{**cfg.__dict__, "report_dir": tmp_path / "rep2"}))
    assert res2.counts == {"done": 0, "failed": 0, "skipped": 1}


def test_pipeline_rendered_input_local_and_meta_recovery(tmp_path):
    pytest.importorskip("OpenEXR")
    src = tmp_path / "renders"
    _write_rendered_sphere(src / "grp" / "ball")
    cfg = pipe.OccupancyGTConfig(dataset=None, root=src, out=tmp_path / "out", local=True,
                                 report_dir=tmp_path / "rep", progress=False)
    res = pipe.run_occupancy_gt(cfg)
    assert res.counts == {"done": 1, "failed": 0, "skipped": 0}
    assert not (tmp_path / "out/renders").exists()  # rendering skipped
    pts = np.load(tmp_path / "out/occupancy/grp/ball/pts.npy")
    r = np.linalg.norm(_centres(pts), axis=1)
    assert len(pts) > 1000 and np.all(np.abs(r - 0.4) <= 1.0 / R)
    assert res.records[0]["views_used"] == 40
    _check_report_against_pts(res)

    # killed after the object finished but before the manifest line: recovered, not redone
    res.manifest.unlink()
    before = (tmp_path / "out/occupancy/grp/ball/pts.npy").stat().st_mtime_ns
    res2 = pipe.run_occupancy_gt(cfg)
    assert res2.counts == {"done": 0, "failed": 0, "skipped": 1}
    assert (tmp_path / "out/occupancy/grp/ball/pts.npy").stat().st_mtime_ns == before
    assert [x["status"] for x in _manifest_lines(res2.manifest)] == ["done"]

    # a different resolution redoes it
    res3 = pipe.run_occupancy_gt(pipe.OccupancyGTConfig(**{**cfg.__dict__, "resolution": 64}))
    assert res3.counts["done"] == 1
    assert np.load(tmp_path / "out/occupancy/grp/ball/pts.npy").max() <= 63


def test_manifest_tolerates_torn_line(tmp_path):
    m = tmp_path / "manifest.jsonl"
    pipe.append_manifest(m, {"object": "a", "status": "failed"})
    pipe.append_manifest(m, {"object": "a", "status": "done"})
    with open(m, "a") as f:
        f.write('{"object": "b", "sta')  # a kill in the middle of a line
    assert {k: v["status"] for k, v in pipe.read_manifest(m).items()} == {"a": "done"}


def test_cli_bad_resolution_is_one_line_error(capsys):
    from geolrm_bench.cli import main

    assert main(["occupancy-gt", "--resolution", "1", "--local", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "resolution" in err


@pytest.mark.slow
@needs_renderer
def test_kill_half_way_and_rerun(tmp_path):
    """SIGTERM mid-run, rerun: each object done exactly once, pts.npy identical to a clean run."""
    root = _make_meshes(tmp_path / "ds", n_spheres=3)
    (root / "bad.obj").unlink()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "geolrm_bench.cli", "occupancy-gt", "--dataset", "meshes", "--root",
           str(root), "--out", str(out), "--render-resolution", "64", "--num-cpus", "1", "--quiet",
           "--report-dir", str(tmp_path / "rep")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYOPENGL_PLATFORM": "osmesa"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    manifest = out / pipe.MANIFEST_NAME
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and manifest.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    first = [x["object"] for x in _manifest_lines(manifest)] if manifest.is_file() else []
    assert len(first) >= 1
    if killed:  # interrupted cleanly (exit 130), the rest left for the rerun
        assert proc.returncode == 130 and len(first) < 4
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = _manifest_lines(manifest)
    names = sorted(x["object"] for x in lines if x["status"] == "done")
    assert names == ["box", "sphere0", "sphere1", "sphere2"]  # each exactly once
    # clean reference run in this process, no Ray, fresh output folder
    ref = pipe.run_occupancy_gt(pipe.OccupancyGTConfig(dataset="meshes", root=root, out=tmp_path / "ref",
                                                       render_resolution=64, local=True, progress=False,
                                                       report_dir=tmp_path / "rep-ref"))
    assert ref.counts["done"] == 4
    for n in names:
        assert (out / "occupancy" / n / "pts.npy").read_bytes() == \
            (tmp_path / "ref/occupancy" / n / "pts.npy").read_bytes(), n


def test_worker_modules_do_not_import_torch():
    """Occupancy workers need only numpy: the pipeline, voxelizer and renderer must not load torch."""
    script = ("import sys\nimport geolrm_bench.occupancy, geolrm_bench.rendering, geolrm_bench.gobjaverse\n"
              "import geolrm_bench.pipelines.occupancy_gt\n"
              "print(sorted(m for m in ('torch', 'torchvision', 'triton') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip() == "[]"
