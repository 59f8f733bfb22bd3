"""Renderer: written depth / JSON back-projected with plain numpy land on analytic surfaces; normals,
colours, textures, projection agreement, atomic writes, collection runs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

from geolrm_bench import cameras, gobjaverse, rendering  # noqa: E402
from geolrm_bench.errors import BenchError  # noqa: E402

RES = 96
BOX_EXTENTS = (0.8, 0.6, 0.4)
VIEWS = [0, 9, 23, 25, 26, 31]


def _backproject(obj_dir, view):
    """Plain numpy back-projection of the WRITTEN depth through the WRITTEN JSON (OpenCV pinhole).

    p_w = R (d K^-1 [u + 0.5, v + 0.5, 1]) + t with fx = 0.5 W / tan(x_fov / 2).
    """
    n = f"{view:05d}"
    cam = json.loads((obj_dir / n / f"{n}.json").read_text())
    _, depth = gobjaverse.read_nd_exr(obj_dir / n / f"{n}_nd.exr")
    H, W = depth.shape
    fx = 0.5 * W / np.tan(cam["x_fov"] / 2)
    fy = 0.5 * H / np.tan(cam["y_fov"] / 2)
    R = np.stack([cam["x"], cam["y"], cam["z"]], axis=1)
    t = np.asarray(cam["origin"])
    v, u = np.nonzero(depth > 0)
    d = depth[v, u].astype(np.float64)
    pc = np.stack([(u + 0.5 - W / 2) / fx * d, (v + 0.5 - H / 2) / fy * d, d], axis=1)
    return pc @ R.T + t, (v, u)


@pytest.fixture(scope="module")
def rendered_box(tmp_path_factory):
    box = trimesh.creation.box(extents=BOX_EXTENTS)  # same shape as the conftest fixture, face-coloured
    n = box.face_normals
    colors = np.zeros((len(box.faces), 4), dtype=np.uint8)
    colors[:, 3] = 255
    axis = np.abs(n).argmax(axis=1)
    for a, c in enumerate([(220, 0, 0), (0, 200, 0), (0, 0, 180)]):
        colors[axis == a, :3] = c
    box.visual = trimesh.visual.ColorVisuals(box, face_colors=colors)
    layers = rendering.render_views(box, resolution=RES, views=VIEWS)
    out = tmp_path_factory.mktemp("r") / "box"
    rendering.write_object_views(layers, out, source="analytic box")
    return out, layers


def test_layers_shapes(rendered_box):
    _, L = rendered_box
    V = len(VIEWS)
    assert L["rgba"].shape == (V, RES, RES, 4) and L["rgba"].dtype == np.uint8
    assert L["depth"].shape == (V, RES, RES) and L["depth"].dtype == np.float32
    assert L["normals"].shape == (V, RES, RES, 3) and L["c2w_opencv"].shape == (V, 4, 4)
    np.testing.assert_allclose(L["c2w_opencv"], cameras.gobjaverse_c2w(VIEWS))
    assert L["fov"][0] == pytest.approx(np.radians(39.6))
    # alpha = depth coverage, white background
    np.testing.assert_array_equal(L["rgba"][..., 3] == 255, L["depth"] > 0)
    assert np.all(L["rgba"][L["depth"] == 0][:, :3] == 255)


def test_box_depth_backprojects_onto_faces(rendered_box):
    obj, _ = rendered_box
    half = np.asarray(BOX_EXTENTS) / 2
    for v in VIEWS:
        p, _ = _backproject(obj, v)
        assert len(p) > 100
        # signed distance to an axis-aligned box surface (outside: norm of excess; inside: -min slack)
        q = np.abs(p) - half
        dist = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
        assert np.median(np.abs(dist)) < 1e-5
        assert np.abs(dist).max() < 1e-3  # a few silhouette-edge pixels sit a fraction of a pixel off


def test_box_normals_and_colours(rendered_box):
    obj, _ = rendered_box
    half = np.asarray(BOX_EXTENTS) / 2
    vb = gobjaverse.load_views(obj, views=VIEWS, clean=False)
    for k, v in enumerate(VIEWS):
        p, (r, c) = _backproject(obj, v)
        s = np.abs(p) / half
        axis = s.argmax(axis=1)
        inner = np.sort(s, axis=1)[:, -2] < 0.97  # away from edges
        expected = np.zeros_like(p)
        expected[np.arange(len(p)), axis] = np.sign(p[np.arange(len(p)), axis])
        n = vb.normals[k].permute(1, 2, 0).numpy()[r, c]
        np.testing.assert_allclose(n[inner], expected[inner], atol=1e-6)
        # the visible face looks at the camera
        cam = cameras.gobjaverse_c2w([v])[0][:3, 3]
        assert np.all(np.einsum("ij,ij->i", n[inner], cam - p[inner]) > 0)
        rgb = np.round(vb.images[k].permute(1, 2, 0).numpy()[r, c] * 255).astype(int)
        palette = np.array([(220, 0, 0), (0, 200, 0), (0, 0, 180)])
        np.testing.assert_array_equal(rgb[inner], palette[axis[inner]])


def test_sphere_depth_and_normals(tmp_path, sphere_mesh):
    radius = np.linalg.norm(sphere_mesh.vertices, axis=1).max()  # icosphere vertices lie on the sphere
    L = rendering.render_views(sphere_mesh, resolution=RES, views=VIEWS)
    obj = rendering.write_object_views(L, tmp_path / "sphere")
    # tessellation bound: faces lie between their plane distance and the radius
    fn, v0 = sphere_mesh.face_normals, sphere_mesh.vertices[sphere_mesh.faces[:, 0]]
    r_min = np.abs(np.einsum("ij,ij->i", fn, v0)).min()
    assert radius - r_min < 2e-4
    for v in VIEWS:
        p, (r, c) = _backproject(obj, v)
        rad = np.linalg.norm(p, axis=1)
        assert rad.min() > r_min - 1e-4 and rad.max() < radius + 1e-4
        n, _ = gobjaverse.read_nd_exr(obj / f"{v:05d}" / f"{v:05d}_nd.exr")
        n = n[r, c]
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
        assert np.all(np.einsum("ij,ij->i", n, p / rad[:, None]) > 0.995)  # close to radial
        # exactly the normal of the face the point lies on (interior pixels)
        # among the faces nearest the point, one is the drawn face: its normal equals the
        # decoded normal and its plane passes through the back-projected point
        _, cand = cKDTree(sphere_mesh.triangles_center).query(p, k=6)  # [N, 6]
        match = np.abs(np.einsum("nkj,nj->nk", fn[cand], n) - 1) < 1e-6
        assert match.any(axis=1).all()
        best = cand[np.arange(len(p)), match.argmax(axis=1)]
        plane = np.abs(np.einsum("ij,ij->i", fn[best], p - v0[best]))
        assert np.median(plane) < 1e-5 and plane.max() < 1e-3


def test_project_points_hits_rendered_marker():
    """A red marker around a 3D point is drawn where project_points puts that point."""
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.4)
    target = np.array([0.7, -0.3, 0.15])
    target = 0.4 * target / np.linalg.norm(target)
    vc = np.full((len(sphere.vertices), 4), 255, np.uint8)
    near = np.linalg.norm(sphere.vertices - target, axis=1) < 0.03
    vc[near, 1:3] = 0
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=vc)
    res = 256
    views = [0, 20, 27]
    L = rendering.render_views(sphere, resolution=res, views=views)
    K = cameras.intrinsics_from_fov()
    checked = 0
    for k in range(len(views)):
        img = L["rgba"][k].astype(int)
        red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 3] == 255)
        c2w_gl = cameras.opencv_to_opengl(L["c2w_opencv"][k])
        uv, z = cameras.project_points(target[None], c2w_gl, K, return_depth=True)
        facing = np.dot(target, L["c2w_opencv"][k][:3, 3] - target) > 0
        if not facing:
            assert red.sum() == 0
            continue
        rows, cols = np.nonzero(red)
        assert len(rows) > 5
        centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5]) / res
        assert np.abs(centroid - uv[0]).max() * res < 1.5
        px = np.floor(uv[0] * res).astype(int)
        assert L["depth"][k][px[1], px[0]] == pytest.approx(z[0], abs=2e-3)
        checked += 1
    assert checked >= 2


def test_texture_colours_and_orientation():
    from PIL import Image

    tex = np.zeros((2, 2, 3), np.uint8)
    tex[0, 0], tex[0, 1], tex[1, 0], tex[1, 1] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 200, 10)
    img = Image.fromarray(tex).resize((64, 64), Image.NEAREST)
    V = np.array([[-0.3, -0.3, 0.1], [0.3, -0.3, 0.1], [0.3, 0.3, 0.1], [-0.3, 0.3, 0.1]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)  # OBJ convention: v = 0 at the image bottom
    mat = trimesh.visual.material.SimpleMaterial(image=img, diffuse=[128, 128, 128, 255])
    quad = trimesh.Trimesh(V, [[0, 1, 2], [0, 2, 3]], visual=trimesh.visual.TextureVisuals(uv=uv, image=img,
                                                                                           material=mat),
                           process=False)
    L = rendering.render_views(quad, resolution=64, views=[25])  # straight down from +Z
    K = cameras.intrinsics_from_fov()
    c2w_gl = cameras.opencv_to_opengl(L["c2w_opencv"][0])
    # world quadrant centres -> expected texel colour (u along +x, v along +y, image row 0 = v = 1)
    for x, y, colour in [(-0.15, -0.15, tex[1, 0]), (0.15, -0.15, tex[1, 1]),
                         (-0.15, 0.15, tex[0, 0]), (0.15, 0.15, tex[0, 1])]:
        uvp = cameras.project_points(np.array([[x, y, 0.1]]), c2w_gl, K)[0]
        col, row = np.floor(uvp * 64).astype(int)
        np.testing.assert_array_equal(L["rgba"][0, row, col, :3], colour)  # Kd grey does not darken
    np.testing.assert_allclose(L["normals"][0][32, 32], [0, 0, 1], atol=1e-6)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, sphere_mesh):
    L = rendering.render_views(sphere_mesh, resolution=32, views=[0, 1, 2])
    calls = {"n": 0}
    real = gobjaverse.write_nd_exr

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(gobjaverse, "write_nd_exr", flaky)
    with pytest.raises(RuntimeError):
        rendering.write_object_views(L, tmp_path / "obj")
    assert list(tmp_path.iterdir()) == []
    # an existing complete folder survives a failed re-write untouched
    monkeypatch.setattr(gobjaverse, "write_nd_exr", real)
    rendering.write_object_views(L, tmp_path / "obj")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    calls["n"] = 0
    monkeypatch.setattr(gobjaverse, "write_nd_exr", flaky)
    with pytest.raises(RuntimeError):
        rendering.write_object_views(L, tmp_path / "obj")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    meta = json.loads((tmp_path / "obj" / "metadata.json").read_text())
    assert meta["views"] == [0, 1, 2] and meta["resolution"] == 32


def test_bad_mesh_and_backend():
    with pytest.raises(BenchError):
        rendering.render_views(trimesh.Trimesh(), resolution=16)
    with pytest.raises(BenchError, match="backend"):
        rendering.render_views(trimesh.creation.box(), resolution=16, backend="vulkan")


@dataclass
class _Asset:
    name: str
    mesh: trimesh.Trimesh
    source: str = "test"
    to_normalized: np.ndarray = None
    warnings: list = None


@dataclass
class _Ref:
    name: str
    broken: bool = False

    def load(self):
        if self.broken:
            raise BenchError("corrupt mesh", f"/data/{self.name}.obj")
        return _Asset(self.name, trimesh.creation.box(extents=(0.5, 0.5, 0.5)), to_normalized=np.eye(4),
                      warnings=["no texture"])


def test_render_collection_resumes_and_reports(tmp_path):
    refs = [_Ref("a"), _Ref("bad", broken=True), _Ref("b")]
    s = rendering.render_collection(refs, tmp_path, resolution=24, views=[0, 25], progress=False)
    assert s.written == ["a", "b"] and s.skipped == []
    assert s.failed == [("bad", "/data/bad.obj: corrupt mesh")]
    assert "FAILED bad" in str(s)
    idx = json.loads((tmp_path / "index.json").read_text())
    assert idx["objects"] == ["a", "b"]
    assert gobjaverse.list_rendered_objects(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["source"] == "test" and meta["warnings"] == ["no texture"]
    assert meta["to_normalized"][0][0] == 1
    s2 = rendering.render_collection(refs, tmp_path, resolution=24, views=[0, 25], progress=False)
    assert s2.skipped == ["a", "b"] and s2.written == [] and len(s2.failed) == 1
    vb = gobjaverse.load_views(tmp_path / "a", views=[0, 25])
    assert vb.images.shape == (2, 3, 24, 24)
    # other settings are not "done": a rerun at another resolution or with other views renders again
    s3 = rendering.render_collection(refs[:1], tmp_path, resolution=16, views=[0, 25], progress=False)
    assert s3.written == ["a"] and s3.skipped == []
    assert gobjaverse.load_views(tmp_path / "a", views=[0]).images.shape == (1, 3, 16, 16)
    s4 = rendering.render_collection(refs[:1], tmp_path, resolution=16, views=[0], progress=False)
    assert s4.written == ["a"] and s4.skipped == []


def test_cli_render_mesh_file(tmp_path, capsys):
    from geolrm_bench.cli import main

    mesh_path = tmp_path / "cube.obj"
    trimesh.creation.box(extents=(2.0, 1.0, 0.5)).export(mesh_path)  # not normalised: the loader does it
    out = tmp_path / "out"
    rc = main(["render", str(mesh_path), "--out", str(out), "--resolution", "32", "--views", "0", "25",
               "--quiet"])
    assert rc == 0
    assert "rendered 1" in capsys.readouterr().out
    vb = gobjaverse.load_views(out / "cube", views=[25], clean=False)
    # top view of the normalised box: its top face at z = 0.25 / 2 (longest side 2 -> 1)
    d = vb.depths[0, 0].numpy()
    assert np.median(d[d > 0]) == pytest.approx(cameras.ORBIT_DISTANCE - 0.125, abs=1e-4)
    assert main(["render", str(tmp_path / "missing.obj"), "--out", str(out)]) == 2
    assert "missing.obj" in capsys.readouterr().err


_EGL_SCRIPT = """
import sys, numpy as np, trimesh
from geolrm_bench import rendering
box = trimesh.creation.box(extents=(0.8, 0.6, 0.4))
L = rendering.render_views(box, resolution=64, views=[0, 25], backend="egl")
np.savez(sys.argv[1], rgba=L["rgba"], depth=L["depth"], normals=L["normals"])
"""


def test_egl_matches_osmesa(tmp_path):
    """EGL (own process: the GL platform is fixed per process) gives the same pixels as OSMesa."""
    import subprocess
    import sys

    out = tmp_path / "egl.npz"
    env = {**os.environ, "PYOPENGL_PLATFORM": "egl"}
    proc = subprocess.run([sys.executable, "-c", _EGL_SCRIPT, str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"EGL not available here: {proc.stderr.strip().splitlines()[-1:]}")
    egl = np.load(out)
    ref = rendering.render_views(trimesh.creation.box(extents=(0.8, 0.6, 0.4)), resolution=64, views=[0, 25])
    np.testing.assert_array_equal(egl["rgba"], ref["rgba"])
    np.testing.assert_allclose(egl["depth"], ref["depth"], atol=1e-5)
    np.testing.assert_array_equal(egl["normals"], ref["normals"])


def test_render_then_import_torchvision_does_not_crash():
    """Mesa's LLVM vs torchvision/triton: the renderer preloads torchvision, so the order is free."""
    import subprocess
    import sys

    script = ("import trimesh\nfrom geolrm_bench import rendering\n"
              "rendering.render_views(trimesh.creation.box(), resolution=16, views=[0])\n"
              "import torchvision, torch._dynamo\nprint('ok')\n")
    env = {**os.environ, "PYOPENGL_PLATFORM": "osmesa"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]


def test_repeated_renders_reuse_shader_programs():
    """pyrender keys its program cache by PyOpenGL's context object, which never compares equal
    under OSMesa: every render compiled (and leaked) new programs. After the first object, more
    renders must add no GL program (count read from pyrender's own cache)."""
    box = trimesh.creation.box(extents=(0.5, 0.4, 0.3))
    rendering.render_views(box, resolution=32, views=[0, 1])
    r = rendering._get_renderer("osmesa", 32, 32)
    cache = r._renderer._program_cache._program_cache
    n = len(cache)
    assert n >= 1
    for _ in range(3):
        rendering.render_views(box, resolution=32, views=[0, 5, 30])
    assert len(cache) == n
