"""Plain reference implementations: the oracles the tests and benchmarks compare the fast code to.

Each function here restates one computation in the most obvious form (loops, float64, no
tiling, no chunking), independent of the production helpers, so a test of "fast == reference"
checks two separate derivations of the same formula. Only this module holds them; the fast
production version of each lives in exactly one library module:

=============================  ==============================================================
reference                      production version
=============================  ==============================================================
:func:`rasterize`              ``geolrm_bench.model.rasterize`` (tiled / pair-list rasterizers;
                               also ``render_gaussians(backend="reference")``)
:func:`deform_attn`            ``geolrm_bench.model.deform_attn.deform_attn`` (also the
                               model's ``reference=True`` path)
:func:`apply_rope3d`           ``geolrm_bench.model.rope3d.apply_rope3d``
:func:`plucker_rays`           ``geolrm_bench.cameras.plucker_rays`` (official form)
:func:`ssim`                   ``geolrm_bench.metrics.image.ssim``
:func:`nearest_distances`      ``geolrm_bench.metrics.geometry.nearest_distances`` (k-d tree)
:func:`voxelize_depth`         ``geolrm_bench.occupancy.voxelize_depth``
=============================  ==============================================================

Conventions are those of the production functions (docs/ARCHITECTURE.md). Slow by design:
small inputs only. Depends on numpy and torch only (imported by ``model/`` for its reference
switches, so it must not import the library modules above).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


# ----------------------------------------------------------------------------- Gaussian splatting
def rasterize(
    means2d: Tensor,  # [N, 2] pixel coordinates (OpenCV grid, pixel centres at +0.5)
    conics: Tensor,  # [N, 3] inverse 2D covariance (a, b, c) = [[a, b], [b, c]]
    opacities: Tensor,  # [N]
    feats: Tensor,  # [N, C]
    depths: Tensor,  # [N] view z, sort key
    valid: Tensor,  # [N] bool
    height: int,
    width: int,
) -> tuple[Tensor, Tensor]:  # [H, W, C] accumulated features, [H, W] final transmittance
    """One view, every Gaussian against every pixel (3DGS rules, no tiles).

    ``alpha = min(0.99, o exp(-0.5 d^T Sigma^-1 d))``, alphas below 1/255 dropped; Gaussians
    stable-sorted by depth; ``T_i = prod_{j<i} (1 - a_j)``; a Gaussian is composited while
    ``T_i (1 - a_i) >= 1e-4`` (3DGS early stop: neither it nor any later one is added once
    that fails). Returns ``sum_i f_i a_i T_i`` and the final transmittance. O(N H W) memory.
    """
    idx = torch.nonzero(valid, as_tuple=False).squeeze(1)
    idx = idx[torch.argsort(depths[idx], stable=True)]
    dt, dev = means2d.dtype, means2d.device
    v, u = torch.meshgrid(torch.arange(height, dtype=dt, device=dev) + 0.5,
                          torch.arange(width, dtype=dt, device=dev) + 0.5, indexing="ij")  # pixel centres
    dx = u.reshape(-1)[None] - means2d[idx, 0, None]  # [n, P]
    dy = v.reshape(-1)[None] - means2d[idx, 1, None]
    a, b, c = conics[idx, 0, None], conics[idx, 1, None], conics[idx, 2, None]
    power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = (opacities[idx, None] * torch.exp(-power)).clamp_max(0.99)  # 3DGS clamp
    alpha = torch.where(alpha >= 1.0 / 255.0, alpha, torch.zeros_like(alpha))  # 3DGS skip rule
    T_after = torch.cumprod(1.0 - alpha, dim=0)  # [n, P]
    keep = (T_after >= 1e-4).to(alpha.dtype).detach()  # prefix-closed (T_after only decreases)
    alpha = alpha * keep
    T_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:1]), 1.0 - alpha[:-1]], 0), dim=0)
    weights = alpha * T_before  # [n, P]
    acc = weights.transpose(0, 1) @ feats[idx]  # [P, C]
    T_final = torch.prod(1.0 - alpha, dim=0)  # [P]
    return acc.reshape(height, width, -1), T_final.reshape(height, width)


# ----------------------------------------------------------------------------- model layers
def deform_attn(
    value: Tensor,  # [BV, L, H, Dh]
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,  # [BV, S, H, nL, P, 2] normalised (x right, y down) in [0, 1]
    attention_weights: Tensor,  # [BV, S, H, nL, P]
) -> Tensor:  # [BV, S, H * Dh]
    """Multi-level deformable attention: one ``grid_sample`` per (view, head, level, point)."""
    bv, _, heads, dh = value.shape
    s = sampling_locations.shape[1]
    sizes = [h * w for h, w in spatial_shapes]
    out = value.new_zeros(bv, s, heads, dh)
    for b in range(bv):
        for hd in range(heads):
            start = 0
            for lvl, (h, w) in enumerate(spatial_shapes):
                vmap = value[b, start:start + sizes[lvl], hd].t().reshape(1, dh, h, w)
                start += sizes[lvl]
                for p in range(sampling_locations.shape[4]):
                    loc = sampling_locations[b, :, hd, lvl, p]  # [S, 2]
                    grid = (2.0 * loc - 1.0).reshape(1, s, 1, 2)
                    samp = F.grid_sample(vmap, grid, mode="bilinear", padding_mode="zeros",
                                         align_corners=False)
                    weight = attention_weights[b, :, hd, lvl, p, None]  # [S, 1]
                    out[b, :, hd] = out[b, :, hd] + samp.reshape(dh, s).t() * weight
    return out.reshape(bv, s, heads * dh)


def apply_rope3d(x: Tensor, positions: Tensor, theta: float = 10000.0) -> Tensor:
    """3D RoPE as a per-pair loop: ``x [B, N, H, D]``, integer ``positions [B, N, 3]``.

    The head dim splits into three axis blocks of ``2q`` channels (q = D / 6); in block ``axis``
    channel pair ``(r, q + r)`` is rotated by ``pos_axis * theta^(-r / q)``.
    """
    out = x.clone()
    d = x.shape[-1]
    q = d // 6
    for axis in range(3):
        pos = positions[..., axis].to(x.dtype)[:, :, None]  # [B, N, 1]
        for r in range(q):
            i, j = 2 * q * axis + r, 2 * q * axis + q + r
            a = pos * theta ** (-r / q)
            u, v = x[..., i], x[..., j]
            out[..., i] = u * torch.cos(a) - v * torch.sin(a)
            out[..., j] = v * torch.cos(a) + u * torch.sin(a)
    return out


# ----------------------------------------------------------------------------- cameras
def plucker_rays(c2w_opengl: np.ndarray, fx_norm: float, height: int, width: int,
                 normalize: bool = False) -> np.ndarray:  # [4, 4] -> [6, H, W] float64
    """Per-pixel float64 loop of the official Plücker rays: focal ``fx_norm * W`` on both axes,
    principal point ``(W/2, H/2)``, camera z = -1 (OpenGL), ``[d, o x d]``."""
    f = fx_norm * width
    out = np.zeros((6, height, width))
    R, o = np.asarray(c2w_opengl)[:3, :3], np.asarray(c2w_opengl)[:3, 3]
    for i in range(height):
        for j in range(width):
            d = R @ np.array([(j + 0.5 - width / 2) / f, -(i + 0.5 - height / 2) / f, -1.0])
            if normalize:
                d = d / np.linalg.norm(d)
            out[:3, i, j] = d
            out[3:, i, j] = np.cross(o, d)
    return out


# ----------------------------------------------------------------------------- metrics
def ssim(pred, target, window: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> Tensor:  # [B, C, H, W] x2 in [0, 1] (numpy or torch) -> [B] float64
    """Plain float64 SSIM (Wang et al. 2004, data range 1), one image plane at a time.

    Gaussian-weighted local moments over the "valid" window positions, the SSIM map
    averaged over pixels and channels per image.
    """
    x_all = torch.as_tensor(np.asarray(pred) if not isinstance(pred, Tensor) else pred).double().cpu()
    y_all = torch.as_tensor(np.asarray(target) if not isinstance(target, Tensor) else target).double().cpu()
    t = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    g = g / g.sum()
    w2 = (g[:, None] * g[None, :]).view(1, 1, window, window)
    c1, c2 = k1 ** 2, k2 ** 2
    B, C = x_all.shape[:2]
    out = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        vals = []
        for c in range(C):
            x, y = x_all[b, c][None, None], y_all[b, c][None, None]
            mu_x, mu_y, e_xx, e_yy, e_xy = (F.conv2d(m, w2) for m in (x, y, x * x, y * y, x * y))
            vx, vy, vxy = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
            smap = ((2 * mu_x * mu_y + c1) * (2 * vxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (vx + vy + c2))
            vals.append(smap.mean())
        out[b] = torch.stack(vals).mean()
    return out


def nearest_distances(query, reference, chunk: int = 256) -> np.ndarray:  # [N, 3], [M, 3] -> [N]
    """Brute-force float64 distance from each query point to its nearest reference point."""
    q = np.asarray(query, dtype=np.float64).reshape(-1, 3)
    r = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    out = np.empty(len(q))
    for i in range(0, len(q), chunk):
        diff = q[i:i + chunk, None, :] - r[None, :, :]
        out[i:i + chunk] = np.sqrt((diff * diff).sum(-1).min(axis=1))
    return out


# ----------------------------------------------------------------------------- occupancy
def voxelize_depth(depths, c2w_opencv, intrinsics, resolution: int = 128) -> np.ndarray:  # -> [N, 3]
    """Back-project every valid depth pixel, round to a voxel, ``np.unique(axis=0)``.

    ``depths [V, H, W]`` z-depth (0 / negative / non-finite = none), ``c2w_opencv [V, 4, 4]``,
    normalised ``intrinsics [V, 3, 3]``. Point ``p_w = R (d K_pix^-1 [u + 0.5, v + 0.5, 1]) + t``;
    voxel ``clip(rint((p_w + 0.5) R), 0, R - 1)`` (the official rule). Sorted unique rows,
    uint8 for R <= 256, else uint16.
    """
    depths = np.asarray(depths, dtype=np.float64)
    c2w = np.asarray(c2w_opencv, dtype=np.float64)
    K = np.asarray(intrinsics, dtype=np.float64)
    V, H, W = depths.shape
    R = int(resolution)
    pts = []
    for i in range(V):
        K_pix = K[i] * np.array([W, H, 1.0])[:, None]
        d = depths[i]
        valid = np.isfinite(d) & (d > 0)
        v, u = np.nonzero(valid)
        cam = d[v, u] * (np.linalg.inv(K_pix) @ np.stack([u + 0.5, v + 0.5, np.ones(u.shape)]))  # [3, n]
        pts.append((c2w[i, :3, :3] @ cam).T + c2w[i, :3, 3])
    points = np.concatenate(pts) if pts else np.zeros((0, 3))
    idx = np.clip(np.rint((points + 0.5) * R), 0, R - 1).astype(np.int64)
    return np.unique(idx.reshape(-1, 3), axis=0).astype(np.uint8 if R <= 256 else np.uint16)


__all__ = ["rasterize", "deform_attn", "apply_rope3d", "plucker_rays", "ssim", "nearest_distances",
           "voxelize_depth"]
