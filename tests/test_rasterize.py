"""Rasterizer tests against analytic images, a float64 re-derivation of EWA, and the tile-free reference."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from geolrm_bench.cameras import look_at_c2w
from geolrm_bench.model.gaussians import Gaussians
from geolrm_bench.model.rasterize import render_gaussians

BG = (0.2, 0.4, 0.6)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cam_on_z(dist: float, dtype=torch.float64) -> torch.Tensor:  # [1, 4, 4]
    """OpenGL camera at (0, 0, dist) looking down -Z at the origin (world axes = camera axes)."""
    c2w = torch.eye(4, dtype=dtype)
    c2w[2, 3] = dist
    return c2w[None]


def _K(f_px: float, height: int, width: int, dtype=torch.float64) -> torch.Tensor:  # [1, 3, 3] normalised
    return torch.tensor([[f_px / width, 0, 0.5], [0, f_px / height, 0.5], [0, 0, 1]], dtype=dtype)[None]


def _one(mean, scale, opacity, color, quat=(1.0, 0, 0, 0), dtype=torch.float64) -> Gaussians:
    t = lambda x: torch.tensor(x, dtype=dtype)  # noqa: E731
    s = scale if isinstance(scale, (list, tuple)) else [scale] * 3
    return Gaussians(means=t([mean]), opacities=t([opacity]), scales=t([s]), quats=t([quat]),
                     colors=t([color]))


def _random(n: int, seed: int, dtype=torch.float64, opacity=(0.05, 0.95), scale=(0.01, 0.06)) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    return Gaussians(
        means=(r(n, 3) - 0.5) * 0.8,
        opacities=opacity[0] + (opacity[1] - opacity[0]) * r(n),
        scales=scale[0] + (scale[1] - scale[0]) * r(n, 3),
        quats=torch.randn(n, 4, generator=gen, dtype=dtype),
        colors=r(n, 3),
    )


def _orbit(dtype=torch.float64) -> torch.Tensor:  # [3, 4, 4] OpenGL cameras looking at the origin
    eyes = [(1.6, 0.3, 0.5), (-0.4, 1.7, -0.3), (0.2, -0.9, 1.4)]
    return torch.stack([torch.from_numpy(look_at_c2w(e, convention="opengl")).to(dtype) for e in eyes])


def _analytic_alpha(o: float, d2: np.ndarray) -> np.ndarray:
    """3DGS alpha from squared Mahalanobis distances: min(0.99, o e^{-d2/2}), < 1/255 -> 0."""
    a = np.minimum(0.99, o * np.exp(-0.5 * d2))
    return np.where(a >= 1 / 255, a, 0.0)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("method", ["tiles", "pairs"])
def test_isotropic_gaussian_head_on_matches_analytic_image(backend, method):
    H = W = 41  # odd: the principal point W/2 = 20.5 is the centre of pixel 20
    f, z, s, o = 60.0, 2.0, 0.05, 0.8
    color = (0.9, 0.1, 0.3)
    out = render_gaussians(_one((0, 0, 0), s, o, color), _cam_on_z(z), _K(f, H, W), H, W,
                           background=BG, backend=backend, method=method)
    s2 = (f * s / z) ** 2 + 0.3  # pixel variance: projected + low-pass dilation
    v, u = np.mgrid[0:H, 0:W] + 0.5
    a_ref = _analytic_alpha(o, ((u - W / 2) ** 2 + (v - H / 2) ** 2) / s2)
    alpha = out["alpha"][0, 0].numpy()
    np.testing.assert_allclose(alpha, a_ref, atol=1e-12)
    assert np.unravel_index(alpha.argmax(), alpha.shape) == (20, 20)
    assert alpha[20, 20] == pytest.approx(o, abs=1e-12)
    # width: one pixel-sigma away from the centre the profile has dropped by e^{-1/2}
    assert alpha[20, 20 + 3] == pytest.approx(o * np.exp(-0.5 * 9 / s2), rel=1e-10)
    rgb_ref = np.asarray(color)[:, None, None] * a_ref + np.asarray(BG)[:, None, None] * (1 - a_ref)
    np.testing.assert_allclose(out["rgb"][0].numpy(), rgb_ref, atol=1e-12)
    np.testing.assert_allclose(out["depth"][0, 0].numpy(), z * a_ref, atol=1e-12)
    # a corner pixel is pure background, zero alpha and zero depth
    assert out["rgb"][0, :, 0, 0].tolist() == pytest.approx(list(BG), abs=1e-15)
    assert out["alpha"][0, 0, 0, 0] == 0 and out["depth"][0, 0, 0, 0] == 0


def test_anisotropic_rotated_gaussian_matches_float64_projection():
    H, W = 48, 64
    fx, fy = 70.0, 66.0  # different focal lengths per axis
    mean = np.array([0.08, -0.05, 0.1])
    scales = np.array([0.09, 0.03, 0.05])
    quat_wxyz = np.array([0.8, 0.3, -0.4, 0.33])
    o = 0.7
    c2w_gl = torch.tensor([[0.0, 0, 1, 2.2], [1, 0, 0, 0.1], [0, 1, 0, -0.05], [0, 0, 0, 1]],
                          dtype=torch.float64)  # looks along -X (world), up = +Z
    K = torch.tensor([[fx / W, 0, 0.52], [0, fy / H, 0.47], [0, 0, 1]], dtype=torch.float64)[None]
    g = _one(mean.tolist(), scales.tolist(), o, (1, 1, 1), quat=quat_wxyz.tolist())
    out = render_gaussians(g, c2w_gl[None], K, H, W, backend="torch")

    # independent float64 derivation: scipy rotation (scalar-last), numeric Jacobian of the pinhole map
    R = Rotation.from_quat(np.r_[quat_wxyz[1:], quat_wxyz[0]]).as_matrix()
    Sigma = R @ np.diag(scales**2) @ R.T
    c2w_cv = c2w_gl.numpy() @ np.diag([1.0, -1, -1, 1])
    w2c = np.linalg.inv(c2w_cv)
    cx, cy = 0.52 * W, 0.47 * H

    def proj(p):
        q = w2c[:3, :3] @ p + w2c[:3, 3]
        return np.array([fx * q[0] / q[2] + cx, fy * q[1] / q[2] + cy])

    eps = 1e-6
    Jw = np.stack([(proj(mean + eps * e) - proj(mean - eps * e)) / (2 * eps) for e in np.eye(3)], axis=1)
    cov2d = Jw @ Sigma @ Jw.T + 0.3 * np.eye(2)
    mu = proj(mean)
    v, u = np.mgrid[0:H, 0:W] + 0.5
    d = np.stack([u - mu[0], v - mu[1]], -1)
    d2 = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov2d), d)
    a_ref = _analytic_alpha(o, d2)
    np.testing.assert_allclose(out["alpha"][0, 0].numpy(), a_ref, atol=1e-7)
    z = (w2c[:3, :3] @ mean + w2c[:3, 3])[2]
    np.testing.assert_allclose(out["depth"][0, 0].numpy(), z * a_ref, atol=1e-7)


def test_two_gaussians_composite_front_to_back_regardless_of_memory_order():
    H = W = 21
    f, cam = 40.0, 2.0
    front = dict(mean=(0.0, 0.0, 0.3), scale=0.08, opacity=0.6, color=(1.0, 0.0, 0.0))
    back = dict(mean=(0.02, 0.0, -0.3), scale=0.1, opacity=0.7, color=(0.0, 0.0, 1.0))

    def scene(first, second):
        gs = [_one(**first), _one(**second)]
        return Gaussians.cat(gs)

    a = render_gaussians(scene(front, back), _cam_on_z(cam), _K(f, H, W), H, W, background=BG)
    b = render_gaussians(scene(back, front), _cam_on_z(cam), _K(f, H, W), H, W, background=BG)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-14)
    # analytic centre pixel (10, 10): the front one is at z = 1.7, the back one at 2.3
    def alpha_at(m, s, o, z):
        # J = [f/z, 0, -f x/z^2] on row u; isotropic Sigma = s^2 I; the centre pixel is on its row (dy = 0)
        s2 = (f * s / z) ** 2 * (1 + (m[0] / z) ** 2) + 0.3
        px = f * m[0] / z  # offset of the centre from the principal point, px
        return min(0.99, o * np.exp(-0.5 * px**2 / s2))

    a1 = alpha_at(front["mean"], front["scale"], front["opacity"], 1.7)
    a2 = alpha_at(back["mean"], back["scale"], back["opacity"], 2.3)
    expect = (np.asarray(front["color"]) * a1 + np.asarray(back["color"]) * a2 * (1 - a1)
              + np.asarray(BG) * (1 - a1) * (1 - a2))
    np.testing.assert_allclose(a["rgb"][0, :, 10, 10].numpy(), expect, atol=1e-12)
    assert a["depth"][0, 0, 10, 10].item() == pytest.approx(1.7 * a1 + 2.3 * a2 * (1 - a1), abs=1e-12)
    assert a["alpha"][0, 0, 10, 10].item() == pytest.approx(1 - (1 - a1) * (1 - a2), abs=1e-12)


def test_depth_of_opaque_gaussian_is_alpha_times_view_z():
    H = W = 25
    g = _one((0.1, -0.05, 0.2), 0.2, 0.99, (0.5, 0.5, 0.5))
    out = render_gaussians(g, _cam_on_z(1.5), _K(30.0, H, W), H, W)
    z = 1.5 - 0.2  # OpenCV view z of the centre
    alpha, depth = out["alpha"][0, 0], out["depth"][0, 0]
    assert alpha.max() > 0.98
    torch.testing.assert_close(depth, z * alpha, rtol=0, atol=1e-12)


def test_near_plane_culls_gaussians_close_to_or_behind_the_camera():
    H = W = 15
    g = Gaussians.cat([_one((0, 0, 1.85), 0.01, 0.9, (1, 0, 0)), _one((0, 0, 2.5), 0.3, 0.9, (1, 0, 0))])
    out = render_gaussians(g, _cam_on_z(2.0), _K(20.0, H, W), H, W, background=BG)  # view z 0.15, -0.5
    assert out["alpha"].abs().max() == 0
    bg = torch.tensor(BG, dtype=torch.float64)[:, None, None].expand(3, H, W)
    torch.testing.assert_close(out["rgb"][0], bg)


@pytest.mark.parametrize("seed,n,size,opacity", [(0, 40, (37, 29), (0.05, 0.95)),
                                                  (1, 300, (50, 64), (0.05, 0.95)),
                                                  (2, 400, (33, 40), (0.9, 0.99))])  # last: early stop
def test_tiled_equals_reference_values(seed, n, size, opacity):
    H, W = size
    g = _random(n, seed, opacity=opacity, scale=(0.01, 0.08))
    c2w = _orbit()
    K = _K(1.3889 * W, H, W).expand(3, 3, 3).clone()
    K[:, 1, 1] = 1.3889 * W / H  # square pixels, focal from the width
    ref = render_gaussians(g, c2w, K, H, W, background=BG, backend="reference")
    # small tiles, small blocks and chunks: many blocks, carried transmittance, compaction of tiles
    for method, tile, budget in [("tiles", 16, 1 << 22), ("tiles", 8, 3000), ("pairs", 16, 0)]:
        out = render_gaussians(g, c2w, K, H, W, background=BG, backend="torch", tile=tile, budget=budget,
                               method=method)
        for k in ref:  # pairs use log-space products: float64 rounding differs at ~1e-12
            torch.testing.assert_close(out[k], ref[k], rtol=0, atol=1e-10)
    if opacity[0] >= 0.9:
        assert ref["alpha"].max() > 1 - 1e-3  # the stop rule is exercised


def _loss_fn(backend, c2w, K, H, W, weights):
    backend, _, method = backend.partition(":")
    def f(means, scales, quats, opacities, colors):
        g = Gaussians(means=means, opacities=opacities, scales=scales, quats=quats, colors=colors)
        out = render_gaussians(g, c2w, K, H, W, background=BG, backend=backend, budget=2000,
                               method=method or "auto")
        return out["rgb"], out["alpha"], out["depth"] * weights
    return f


def test_gradients_tiled_equal_reference():
    H, W = 30, 34
    g = _random(60, 3, opacity=(0.2, 0.9))
    c2w, K = _orbit()[:2], _K(1.3889 * W, H, W).expand(2, 3, 3)
    grads = {}
    for backend in ("reference", "torch:tiles", "torch:pairs"):
        params = [t.clone().requires_grad_(True) for t in (g.means, g.scales, g.quats, g.opacities, g.colors)]
        outs = _loss_fn(backend, c2w, K, H, W, 1.0)(*params)
        gen = torch.Generator().manual_seed(7)
        loss = sum((o * torch.rand(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
        grads[backend] = torch.autograd.grad(loss, params)
    for method in ("torch:tiles", "torch:pairs"):
        for a, b in zip(grads["reference"], grads[method]):
            assert a.abs().max() > 0
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


def _f64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["reference", "torch:tiles", "torch:pairs"])
def test_gradcheck_float64(backend):
    H, W = 9, 11
    g = Gaussians(
        means=_f64([[0.02, 0.01, 0.0], [-0.05, 0.03, 0.1], [0.04, -0.04, -0.1]]),
        opacities=_f64([0.6, 0.5, 0.7]),
        scales=_f64([[0.05, 0.03, 0.04], [0.04, 0.05, 0.03], [0.06, 0.04, 0.05]]),
        quats=_f64([[0.9, 0.1, -0.2, 0.3], [0.7, -0.3, 0.2, 0.1], [1.0, 0.2, 0.1, -0.1]]),
        colors=_f64([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.3, 0.3, 0.9]]),
    )
    params = tuple(t.clone().requires_grad_(True)
                   for t in (g.means, g.scales, g.quats, g.opacities, g.colors))
    f = _loss_fn(backend, _cam_on_z(1.2), _K(12.0, H, W), H, W, 1.0)
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_batched_gaussians_and_float32():
    H, W = 20, 24
    g64 = _random(50, 5)
    g = Gaussians(**{k: torch.stack([v, v.flip(0)]).float() for k, v in g64.as_dict().items()})
    c2w = _orbit(torch.float32)[:2][None].expand(2, 2, 4, 4)
    K = _K(30.0, H, W, torch.float32).expand(2, 2, 3, 3)
    out = render_gaussians(g, c2w, K, H, W)
    assert out["rgb"].shape == (2, 2, 3, H, W) and out["rgb"].dtype == torch.float32
    assert out["alpha"].shape == (2, 2, 1, H, W) and out["depth"].shape == (2, 2, 1, H, W)
    ref = render_gaussians(g64, _orbit()[:2], _K(30.0, H, W).expand(2, 3, 3), H, W, backend="reference")
    for b in range(2):  # the batch items hold the same set in a different memory order
        torch.testing.assert_close(out["rgb"][b].double(), ref["rgb"], rtol=0, atol=1e-4)


def test_bad_arguments_raise_clear_errors():
    g = _random(3, 0)
    with pytest.raises(ValueError, match="backend"):
        render_gaussians(g, _cam_on_z(2.0), _K(10.0, 8, 8), 8, 8, backend="opengl")
    with pytest.raises(ValueError, match="K_norm"):
        render_gaussians(g, _cam_on_z(2.0), _K(10.0, 8, 8)[0], 8, 8)
    with pytest.raises(ValueError, match="CUDA"):
        render_gaussians(g, _cam_on_z(2.0), _K(10.0, 8, 8), 8, 8, backend="gsplat")


def test_importing_the_module_does_not_import_gsplat():
    code = "import sys, geolrm_bench.model.rasterize; print('gsplat' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat")
def test_gsplat_matches_torch_rasterizer():
    H, W = 128, 160
    g = _random(2000, 11, dtype=torch.float32, opacity=(0.05, 0.9), scale=(0.005, 0.03))
    c2w = _orbit(torch.float32)
    K = _K(1.3889 * W, H, W, torch.float32).expand(3, 3, 3)
    ours = render_gaussians(g, c2w, K, H, W, background=BG, backend="torch")
    gpu = render_gaussians(g.to("cuda"), c2w.cuda(), K.cuda(), H, W, background=BG, backend="gsplat")
    for k in ("rgb", "alpha"):
        mse = ((gpu[k].cpu() - ours[k]) ** 2).mean().item()
        assert 10 * np.log10(1 / max(mse, 1e-20)) > 40, k
    depth_diff = (gpu["depth"].cpu() - ours["depth"]).abs()
    assert depth_diff.mean() < 1e-2
