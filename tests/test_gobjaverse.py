"""GObjaverse format: EXR/PNG/JSON round trips, normal frames, depth cleaning vs scipy, load_views."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from geolrm_bench import cameras, gobjaverse
from geolrm_bench.errors import BenchError


def test_unity_blender_normal_frames():
    n = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    stored = gobjaverse.blender_to_unity_normals(n)
    # stored (R, G, B) = (-nx, nz, -ny)
    np.testing.assert_array_equal(stored, [[-1, 0, 0], [0, 0, -1], [0, 1, 0]])
    # Blender normal = (-R, -B, G)
    rgb = np.random.default_rng(0).normal(size=(5, 3))
    dec = gobjaverse.unity_to_blender_normals(rgb)
    np.testing.assert_array_equal(dec, np.stack([-rgb[:, 0], -rgb[:, 2], rgb[:, 1]], 1))
    np.testing.assert_array_equal(gobjaverse.unity_to_blender_normals(stored), n)
    t = torch.from_numpy(rgb)
    np.testing.assert_array_equal(gobjaverse.unity_to_blender_normals(t).numpy(), dec)


@pytest.mark.parametrize("compression", ["none", "zip", "piz"])
def test_exr_round_trip(tmp_path, compression):
    import OpenEXR

    rng = np.random.default_rng(1)
    n = rng.normal(size=(6, 7, 3)).astype(np.float32)
    d = rng.uniform(0.5, 2.0, size=(6, 7)).astype(np.float32)
    p = gobjaverse.write_nd_exr(tmp_path / "v_nd.exr", n, d, compression=compression)
    # raw channels, read independently with OpenEXR: stored R,G,B = -nx, nz, -ny, A = depth
    with OpenEXR.File(str(p), separate_channels=True) as f:
        ch = {k: v.pixels for k, v in f.channels().items()}
    np.testing.assert_array_equal(ch["R"], -n[..., 0])
    np.testing.assert_array_equal(ch["G"], n[..., 2])
    np.testing.assert_array_equal(ch["B"], -n[..., 1])
    np.testing.assert_array_equal(ch["A"], d)
    n2, d2 = gobjaverse.read_nd_exr(p)
    np.testing.assert_array_equal(n2, n)
    np.testing.assert_array_equal(d2, d)
    assert n2.dtype == np.float32 and d2.dtype == np.float32


def test_exr_half_read_as_float32(tmp_path):
    n = np.full((4, 4, 3), 0.5, np.float32)
    d = np.full((4, 4), 1.25, np.float32)
    p = gobjaverse.write_nd_exr(tmp_path / "h_nd.exr", n, d, half=True)
    n2, d2 = gobjaverse.read_nd_exr(p)
    assert d2.dtype == np.float32
    np.testing.assert_array_equal(d2, d)  # exactly representable in half
    np.testing.assert_array_equal(n2, n)


def test_clean_depth_matches_scipy_erosion():
    rng = np.random.default_rng(2)
    dist = 1.645
    d = rng.uniform(0.9, 1.6, size=(40, 50)).astype(np.float32)
    d[rng.uniform(size=d.shape) < 0.1] = 0.0  # background holes
    d[5, 5] = 0.7  # nearer than dist - 0.867 = 0.778: invalid
    valid = d >= dist - 0.867
    ref_valid = ndimage.binary_erosion(valid, structure=np.ones((3, 3)), border_value=0)
    out = gobjaverse.clean_depth(d, dist)
    np.testing.assert_array_equal(out > 0, ref_valid)
    np.testing.assert_array_equal(out[ref_valid], d[ref_valid])
    assert out[5, 5] == 0 and out[4, 4] == 0  # the near pixel and its neighbours


def _write_fake_object(obj, views=(0, 1), H=8, W=8):
    rng = np.random.default_rng(3)
    c2w = cameras.gobjaverse_c2w(list(views))
    data = {}
    for k, v in enumerate(views):
        rgba = rng.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
        n = rng.normal(size=(H, W, 3)).astype(np.float32)
        d = rng.uniform(1.2, 1.4, size=(H, W)).astype(np.float32)
        gobjaverse.write_view(obj, v, rgba, c2w[k], n, d)
        data[v] = (rgba, n, d, c2w[k])
    return data


def test_write_and_load_views(tmp_path):
    obj = tmp_path / "obj"
    data = _write_fake_object(obj, views=(0, 25))
    assert gobjaverse.is_gobjaverse_object(obj)
    for p in gobjaverse.view_paths(obj, 25).values():
        assert p.is_file()
    raw = json.loads(gobjaverse.view_paths(obj, 25)["json"].read_text())
    assert raw["x_fov"] == pytest.approx(np.radians(39.6))
    vb = gobjaverse.load_views(obj, views=[0, 25], background=(0.0, 0.5, 1.0), clean=False)
    assert vb.images.shape == (2, 3, 8, 8) and vb.masks.shape == (2, 1, 8, 8)
    assert vb.depths.shape == (2, 1, 8, 8) and vb.normals.shape == (2, 3, 8, 8)
    assert vb.view_indices == [0, 25] and len(vb) == 2
    for k, v in enumerate((0, 25)):
        rgba, n, d, c2w = data[v]
        f = rgba.astype(np.float64) / 255
        a = f[..., 3:]
        comp = f[..., :3] * a + np.array([0.0, 0.5, 1.0]) * (1 - a)
        np.testing.assert_allclose(vb.images[k].permute(1, 2, 0).numpy(), comp, atol=1e-6)
        np.testing.assert_allclose(vb.masks[k, 0].numpy(), a[..., 0], atol=1e-7)
        np.testing.assert_array_equal(vb.depths[k, 0].numpy(), d)
        np.testing.assert_allclose(vb.normals[k].permute(1, 2, 0).numpy(), n, atol=1e-7)
        np.testing.assert_allclose(vb.c2w_opencv[k].numpy(), c2w, atol=1e-6)
        np.testing.assert_allclose(vb.c2w_opengl[k].numpy(), c2w @ np.diag([1, -1, -1, 1.0]), atol=1e-6)
    np.testing.assert_allclose(vb.intrinsics[0].numpy(), cameras.intrinsics_from_fov(), atol=1e-6)
    # cleaning: every pixel touches the border or is inside; with 8x8 the eroded mask is the 6x6 interior
    vc = gobjaverse.load_views(obj, views=[0], clean=True)
    m = vc.depths[0, 0].numpy() > 0
    assert m[1:-1, 1:-1].all() and not m[0].any() and not m[:, -1].any()
    # resize: area for images, nearest for depth
    vr = gobjaverse.load_views(obj, views=[0], resolution=4, clean=False)
    assert vr.images.shape == (1, 3, 4, 4) and vr.depths.shape == (1, 1, 4, 4)
    img = gobjaverse.load_views(obj, views=[0], clean=False).images[0].numpy()
    np.testing.assert_allclose(vr.images[0].numpy(), img.reshape(3, 4, 2, 4, 2).mean((2, 4)), atol=1e-6)
    assert set(np.unique(vr.depths.numpy())) <= set(np.unique(data[0][2]))


def test_bad_files_name_the_file(tmp_path):
    obj = tmp_path / "obj"
    _write_fake_object(obj, views=(0,))
    p = gobjaverse.view_paths(obj, 0)
    p["png"].write_bytes(b"not a png at all")
    with pytest.raises(BenchError, match="00000.png"):
        gobjaverse.load_views(obj, views=[0])
    _write_fake_object(obj, views=(0,))
    p["exr"].write_bytes(p["exr"].read_bytes()[:200])
    with pytest.raises(BenchError, match="00000_nd.exr"):
        gobjaverse.load_views(obj, views=[0])
    _write_fake_object(obj, views=(0,))
    p["json"].write_text('{"x": [1, 0, 0], "y": ')
    with pytest.raises(BenchError, match="00000.json"):
        gobjaverse.load_views(obj, views=[0])
    with pytest.raises(BenchError, match="00001"):
        gobjaverse.load_views(obj, views=[1])  # missing view
    with pytest.raises(BenchError, match="nowhere"):
        gobjaverse.load_views(tmp_path / "nowhere")


def test_list_rendered_objects(tmp_path):
    root = tmp_path / "r"
    for name in ("b", "a", "grp/x1"):
        _write_fake_object(root / name, views=(0,), H=2, W=2)
    (root / "notobj").mkdir()
    names = [p.relative_to(root).as_posix() for p in gobjaverse.list_rendered_objects(root)]
    assert names == ["a", "b", "grp/x1"]
    (root / "gobjaverse_280k.json").write_text(json.dumps(["grp/x1", "grp/missing"]))
    assert gobjaverse.list_rendered_objects(root) == [root / "grp" / "x1"]
    (root / "index.json").write_text(json.dumps({"objects": ["b"]}))
    assert gobjaverse.list_rendered_objects(root) == [root / "b"]
    (root / "index.json").write_text(json.dumps({"objects": 3}))
    with pytest.raises(BenchError, match="index.json"):
        gobjaverse.list_rendered_objects(root)


def test_exr_layer_prefixed_channels_and_missing_channel(tmp_path):
    import OpenEXR

    d = np.full((3, 3), 1.5, np.float32)
    r, g, b = (np.full((3, 3), v, np.float32) for v in (0.1, 0.2, 0.3))
    p = tmp_path / "layer_nd.exr"
    with OpenEXR.File({"compression": OpenEXR.NO_COMPRESSION, "type": OpenEXR.scanlineimage},
                      {"View.R": r, "View.G": g, "View.B": b, "View.A": d}) as f:
        f.write(str(p))
    n, depth = gobjaverse.read_nd_exr(p)
    np.testing.assert_allclose(n[0, 0], [-0.1, -0.3, 0.2], rtol=1e-6)
    np.testing.assert_array_equal(depth, d)
    q = tmp_path / "rgb_nd.exr"
    with OpenEXR.File({"compression": OpenEXR.NO_COMPRESSION, "type": OpenEXR.scanlineimage},
                      {"R": r, "G": g, "B": b}) as f:
        f.write(str(q))
    with pytest.raises(BenchError, match="rgb_nd.exr.*lacks channel"):
        gobjaverse.read_nd_exr(q)


def test_load_cameras_without_images(tmp_path):
    """Cameras only (reconstruct's render views): the layout's OpenGL c2w, GObjaverse K, PNG size."""
    obj = tmp_path / "obj"
    _write_fake_object(obj, views=(3, 26), H=6, W=10)
    c2w, K, size = gobjaverse.load_cameras(obj, [26, 3])
    assert size == (6, 10) and c2w.dtype == K.dtype == np.float32
    np.testing.assert_allclose(c2w, cameras.gobjaverse_c2w([26, 3], convention="opengl"), atol=1e-6)
    np.testing.assert_allclose(K, np.stack([cameras.intrinsics_from_fov()] * 2), atol=1e-6)
    with pytest.raises(BenchError, match="00007"):
        gobjaverse.load_cameras(obj, [7])
