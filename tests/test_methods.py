"""geolrm_bench.methods: scoring in both frames, 3DGS .ply detection, PNG compositing.

References are analytic (known offsets, known MSE, known alpha blends), not earlier outputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from geolrm_bench import methods, scoring
from geolrm_bench.datasets import points_to_gt_frame, points_to_normalized_frame


def _similarity(scale: float, angle: float, t) -> np.ndarray:  # [4, 4] x' = s R x + t
    c, s = math.cos(angle), math.sin(angle)
    m = np.eye(4)
    m[:3, :3] = scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    m[:3, 3] = t
    return m


def test_frame_maps_are_inverse():
    rng = np.random.default_rng(0)
    m = _similarity(0.02, 0.7, (0.1, -0.2, 0.3))
    pts = rng.normal(size=(50, 3))
    np.testing.assert_allclose(points_to_gt_frame(points_to_normalized_frame(pts, m), m), pts, atol=1e-9)
    # the normalised map is s R x + t, written out by hand
    np.testing.assert_allclose(points_to_normalized_frame(pts, m), pts @ m[:3, :3].T + m[:3, 3])


def test_geometry_scores_headline_box2_metres_and_unitbox():
    # two GT points 10 m apart (in cm: HOPE-like), prediction = GT shifted by 30 cm along y
    unit_m, scale = 0.01, 0.003  # 1 GT unit = 1 cm; normalised = 0.003 * R * cm + t
    m = _similarity(scale, 0.3, (0.05, 0.0, -0.1))
    gt = np.array([[0.0, 0.0, 0.0], [1000.0, 0.0, 0.0]])
    shift = np.array([0.0, 30.0, 0.0])
    pred_norm = points_to_normalized_frame(gt + shift, m)
    out = scoring.geometry_scores(pred_norm, gt, m, unit_m=unit_m, tau=0.2)
    # headline: the object scaled to [-1, 1]^3 = 2 x the normalised frame: 2 * 0.003 * 30 = 0.18
    assert out["chamfer"] == pytest.approx(0.18, rel=1e-9)
    assert out["fscore"] == 1.0  # 0.18 < tau 0.2
    assert out["chamfer_m"] == pytest.approx(0.30, rel=1e-9)  # metres
    assert out["fscore_m"] == 0.0  # 0.30 m > tau 0.2
    assert out["chamfer_unitbox"] == pytest.approx(30.0 * scale, rel=1e-9)  # 0.09 normalised units
    assert out["fscore_unitbox"] == 1.0  # 0.09 < 0.2


def test_image_scores_known_mse():
    gt = np.full((2, 3, 16, 16), 0.5, np.float32)
    pred = gt.copy()
    pred[1] += 0.1  # MSE 0.01 -> PSNR 20 dB
    ps, ss = scoring.image_scores(pred, gt)
    assert ps.shape == ss.shape == (2,)
    assert ps[1] == pytest.approx(20.0, abs=1e-3)
    assert ss[0] == pytest.approx(1.0, abs=1e-6)


def test_is_3dgs_ply(tmp_path):
    gs = tmp_path / "gs.ply"
    gs.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\n"
                   b"property float opacity\nend_header\n")
    mesh = tmp_path / "mesh.ply"
    mesh.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nend_header\n")
    assert methods._is_3dgs_ply(gs)
    assert not methods._is_3dgs_ply(mesh)
    assert not methods._is_3dgs_ply(tmp_path / "absent.ply")


def test_read_png_on_background(tmp_path):
    from PIL import Image

    a = np.zeros((4, 4, 4), np.uint8)
    a[:2] = (255, 0, 0, 255)  # opaque red top half, transparent bottom half
    Image.fromarray(a, "RGBA").save(tmp_path / "v.png")
    img = methods._read_png_on_bg(tmp_path / "v.png", (1.0, 1.0, 1.0), 4)
    assert img.shape == (3, 4, 4)
    np.testing.assert_allclose(img[:, 0, 0], (1.0, 0.0, 0.0))
    np.testing.assert_allclose(img[:, 3, 0], (1.0, 1.0, 1.0))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(methods.BenchError, match="bad.png"):
        methods._read_png_on_bg(tmp_path / "bad.png", (1.0, 1.0, 1.0), 4)
