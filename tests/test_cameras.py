"""Cameras: layout vs trigonometry, convention round trips, JSON, Plücker rays and projection.

References are float64 re-derivations written out in the tests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from geolrm_bench import _reference, cameras
from geolrm_bench.errors import BenchError


def _expected_position(elev_deg, azim_deg, dist):
    e, a = math.radians(elev_deg), math.radians(azim_deg)
    return dist * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])


def test_layout_ranges_and_positions():
    views = cameras.gobjaverse_views()
    assert [v.index for v in views] == list(range(40))
    c2w = cameras.gobjaverse_c2w()
    for v in views:
        if v.index <= 23:
            assert 5.0 - 1e-9 <= v.elevation_deg <= 30.0 + 1e-9
            assert v.azimuth_deg == pytest.approx(15.0 * v.index)
            assert v.distance == pytest.approx(1.6450)
        elif 27 <= v.index <= 38:
            assert -5.0 - 1e-9 <= v.elevation_deg <= 5.0 + 1e-9
            assert v.azimuth_deg == pytest.approx(30.0 * (v.index - 27))
            assert v.distance == pytest.approx(1.9547)
        pos = c2w[v.index, :3, 3]
        expected = _expected_position(v.elevation_deg, v.azimuth_deg, v.distance)
        np.testing.assert_allclose(pos, expected, atol=1e-12)
        # recover elevation / azimuth / distance from the matrix with plain trig
        r = np.linalg.norm(pos)
        assert r == pytest.approx(v.distance)
        assert math.degrees(math.asin(pos[2] / r)) == pytest.approx(v.elevation_deg, abs=1e-9)
        if abs(v.elevation_deg) < 89:
            azim = math.degrees(math.atan2(pos[1], pos[0])) % 360
            assert azim == pytest.approx(v.azimuth_deg % 360, abs=1e-9)
    assert views[0].elevation_deg == pytest.approx(5.0) and views[23].elevation_deg == pytest.approx(30.0)
    assert views[27].elevation_deg == pytest.approx(-5.0) and views[38].elevation_deg == pytest.approx(5.0)
    assert views[25].elevation_deg == 90 and views[26].elevation_deg == -90
    np.testing.assert_allclose(c2w[24], c2w[0])
    np.testing.assert_allclose(c2w[39], c2w[27])


def test_layout_axes_look_at_origin_opencv():
    c2w = cameras.gobjaverse_c2w(convention="opencv")
    R = c2w[:, :3, :3]
    eye = np.broadcast_to(np.eye(3), R.shape)
    np.testing.assert_allclose(np.einsum("vab,vac->vbc", R, R), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    pos = c2w[:, :3, 3]
    fwd = -pos / np.linalg.norm(pos, axis=1, keepdims=True)
    np.testing.assert_allclose(R[:, :, 2], fwd, atol=1e-12)  # OpenCV z points at the origin
    side = [i for i in range(40) if i not in (25, 26)]
    assert np.all(R[side, 2, 1] < 0)  # image "down" has a negative world-z component (Z-up world)
    assert np.all(np.abs(R[side, 2, 0]) < 1e-12)  # image rows are horizontal


def test_opencv_opengl_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(2, 3, 4, 4))
    gl = cameras.opencv_to_opengl(m)
    np.testing.assert_allclose(gl, m @ np.diag([1.0, -1.0, -1.0, 1.0]))
    np.testing.assert_allclose(cameras.opengl_to_opencv(gl), m)
    t = torch.from_numpy(m)
    np.testing.assert_allclose(cameras.opencv_to_opengl(t).numpy(), gl)
    np.testing.assert_allclose(cameras.opengl_to_opencv(cameras.opencv_to_opengl(t)).numpy(), m)
    np.testing.assert_allclose(cameras.gobjaverse_c2w(convention="opengl"),
                               cameras.gobjaverse_c2w() @ np.diag([1.0, -1.0, -1.0, 1.0]), atol=1e-15)


def test_look_at_matches_orbit_and_handles_poles():
    for v in cameras.gobjaverse_views():
        if abs(v.elevation_deg) < 89:
            np.testing.assert_allclose(cameras.look_at_c2w(v.position), v.c2w_opencv(), atol=1e-12)
    top = cameras.look_at_c2w([0, 0, 2.0])
    np.testing.assert_allclose(top[:3, 2], [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(top[:3, :3]), 1.0)


def test_intrinsics():
    K = cameras.intrinsics_from_fov()
    assert K[0, 0] == pytest.approx(1.3889, abs=1e-4) and K[1, 1] == pytest.approx(1.3889, abs=1e-4)
    assert K[0, 2] == 0.5 and K[1, 2] == 0.5
    Kp = cameras.intrinsics_to_pixels(K, 256, 512)
    assert Kp[0, 0] == pytest.approx(0.5 * 512 / math.tan(math.radians(19.8)))
    assert Kp[1, 2] == pytest.approx(128.0) and Kp[0, 2] == pytest.approx(256.0)
    np.testing.assert_allclose(cameras.intrinsics_to_normalized(Kp, 256, 512), K)
    assert cameras.fov_from_focal(K[0, 0]) == pytest.approx(math.radians(39.6))


def test_camera_json_round_trip_and_extra_keys(tmp_path):
    c2w = cameras.gobjaverse_c2w([7])[0]
    p = cameras.write_camera_json(tmp_path / "00007.json", c2w, 0.6911, 0.6912, max_depth=5.0)
    raw = json.loads(p.read_text())
    np.testing.assert_allclose(raw["x"], c2w[:3, 0])
    np.testing.assert_allclose(raw["origin"], c2w[:3, 3])
    cam = cameras.read_camera_json(p)
    np.testing.assert_allclose(cam.c2w_opencv, c2w)
    assert (cam.x_fov, cam.y_fov) == (0.6911, 0.6912)
    assert cam.extra == {"max_depth": 5.0}
    assert cam.distance == pytest.approx(1.6450)


@pytest.mark.parametrize("content", [
    "{not json", '{"x": [1, 0, 0]}',
    '{"x": [1, 0], "y": [0,1,0], "z": [0,0,1], "origin": [0,0,0], "x_fov": 0.7}', "[1, 2]"])
def test_camera_json_malformed_names_file(tmp_path, content):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(BenchError, match="bad.json"):
        cameras.read_camera_json(p)


@pytest.mark.parametrize("normalize", [False, True])
def test_plucker_rays_vs_float64_loop(normalize):
    c2w = cameras.gobjaverse_c2w([3, 25, 30], convention="opengl")
    K = np.stack([cameras.intrinsics_from_fov()] * 3)
    K[1, 0, 0] = 1.1  # a different focal per view
    H, W = 5, 7
    rays = cameras.plucker_rays(torch.from_numpy(c2w), torch.from_numpy(K), H, W, compat=True,
                                normalize=normalize)
    assert rays.shape == (3, 6, H, W) and rays.dtype == torch.float64
    for v in range(3):
        ref = _reference.plucker_rays(c2w[v], K[v, 0, 0], H, W, normalize)
        np.testing.assert_allclose(rays[v].numpy(), ref, atol=1e-12)
    # float32 from numpy input, extra batch dims
    r32 = cameras.plucker_rays(c2w[None].astype(np.float32), K[None].astype(np.float32), H, W, compat=True)
    assert r32.shape == (1, 3, 6, H, W) and r32.dtype == torch.float32


def test_project_points_vs_pixel_model_and_official_rule():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-0.5, 0.5, size=(50, 3))
    K = cameras.intrinsics_from_fov()
    for idx in (0, 13, 25, 26, 33):
        c2w_cv = cameras.gobjaverse_c2w([idx])[0]
        # OpenCV pinhole, float64: x_cam = R^T (p - t), u = fx x/z + cx
        xc = (pts - c2w_cv[:3, 3]) @ c2w_cv[:3, :3]
        ref = np.stack([K[0, 0] * xc[:, 0] / xc[:, 2] + 0.5, K[1, 1] * xc[:, 1] / xc[:, 2] + 0.5], -1)
        c2w_gl = cameras.opencv_to_opengl(c2w_cv)
        uv, z = cameras.project_points(pts, c2w_gl, K, return_depth=True)
        np.testing.assert_allclose(uv, ref, atol=1e-12)
        np.testing.assert_allclose(z, xc[:, 2], atol=1e-12)
        # official: P = K inv(c2w)[:3, :4]; uv = xy / z; u = 1 - u
        P = K @ np.linalg.inv(c2w_gl)[:3, :4]
        h = np.concatenate([pts, np.ones((50, 1))], 1) @ P.T
        off = h[:, :2] / h[:, 2:]
        off[:, 0] = 1 - off[:, 0]
        np.testing.assert_allclose(uv, off, atol=1e-12)
    # torch, batched
    c2w_gl = torch.from_numpy(cameras.gobjaverse_c2w([0, 5], convention="opengl"))
    uv_t = cameras.project_points(torch.from_numpy(pts).expand(2, 50, 3), c2w_gl,
                                  torch.from_numpy(K).expand(2, 3, 3))
    assert uv_t.shape == (2, 50, 2)
    assert torch.all((uv_t > 0) & (uv_t < 1))  # the whole cube is in view


def test_plucker_direction_hits_projected_pixel():
    """A pixel's ray direction from plucker_rays projects back onto that pixel's centre."""
    c2w = cameras.gobjaverse_c2w([10], convention="opengl")[0]
    K = cameras.intrinsics_from_fov()
    H = W = 16
    rays = cameras.plucker_rays(c2w, K, H, W).double().numpy()
    i, j = 3, 11
    p = c2w[:3, 3] + 1.2 * rays[:3, i, j]
    uv = cameras.project_points(p[None], c2w, K)[0]
    np.testing.assert_allclose(uv * [W, H], [j + 0.5, i + 0.5], atol=1e-4)


def test_rays_and_projection_stay_fp32_under_autocast():
    """Camera geometry ignores bf16 autocast (the model's bf16 Table 3 run): same fp32 result."""
    import torch

    from geolrm_bench.cameras import gobjaverse_c2w, intrinsics_from_fov, plucker_rays, project_points

    c2w = torch.as_tensor(gobjaverse_c2w([0, 6], convention="opengl"), dtype=torch.float32)
    K = torch.as_tensor(intrinsics_from_fov(), dtype=torch.float32).expand(2, 3, 3)
    pts = torch.rand(2, 5, 3) - 0.5
    ref_rays, ref_uv = plucker_rays(c2w, K, 8, 8), project_points(pts, c2w, K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rays, uv = plucker_rays(c2w, K, 8, 8), project_points(pts, c2w, K)
    assert rays.dtype == torch.float32 and uv.dtype == torch.float32
    torch.testing.assert_close(rays, ref_rays, rtol=0, atol=0)
    torch.testing.assert_close(uv, ref_uv, rtol=0, atol=0)
