"""Gaussian splatting: ``render_gaussians`` (gsplat on CUDA, our own tiled PyTorch rasterizer on CPU).

Conventions (see docs/ARCHITECTURE.md):

* Cameras come in as OpenGL camera-to-world matrices ``c2w_opengl`` ``[V, 4, 4]`` (columns = right,
  up, backward, position) in the normalised object frame. Internally they are converted once to
  OpenCV (``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``) and inverted to world-to-camera.
* Intrinsics are *normalised*: pixel focal ``fx = K[0, 0] * W``, ``fy = K[1, 1] * H``, principal
  point ``(K[0, 2] * W, K[1, 2] * H)`` on the OpenCV pixel grid (u right, v down, pixel ``(i, j)``
  has its centre at ``(j + 0.5, i + 0.5)``). gsplat uses the same grid (its rasterizer evaluates
  pixel ``px + 0.5``), so pixel intrinsics are passed to it unchanged.
* Outputs: ``rgb`` ``[V, 3, H, W]`` composited on ``background``; ``alpha`` ``[V, 1, H, W]`` =
  ``sum_i a_i T_i``; ``depth`` ``[V, 1, H, W]`` = ``sum_i z_i a_i T_i`` with ``z_i`` the OpenCV
  view-space z (world units, positive in front) of Gaussian i's centre, NOT divided by alpha and 0
  on empty pixels, as the official GeoLRM renderer (diff-gaussian-rasterization fork) returns it.

Rasterization follows standard 3DGS: EWA projection of the 3D covariance ``R S S^T R^T`` (quaternion
(w, x, y, z), scales = standard deviations) with the Jacobian's x/z, y/z clamped to 1.3x the field of
view (as 3DGS / gsplat), a ``eps2d = 0.3`` px^2 low-pass dilation of the 2D covariance, culling of
centres with view z <= ``near`` (0.2 as the official renderer), ``alpha = min(0.99, o exp(-0.5 d^T
Sigma^-1 d))``, contributions with ``alpha < 1/255`` skipped, front-to-back compositing in order of
view z, and early termination: a Gaussian that would bring the transmittance below 1e-4 is not
composited, nor any after it (exactly the 3DGS kernel rule).

Support of a Gaussian: instead of a fixed 3-sigma square, a Gaussian is assigned to every tile that
its ``alpha >= 1/255`` ellipse touches (half-extent ``sqrt(2 ln(255 o)) sigma`` per axis, at most
3.33 sigma as in gsplat). Because the skip rule already drops everything outside that ellipse, the
tiled rasterizer and the tile-free reference produce the same image: tiling is an optimisation
only, not an approximation. (The official CUDA kernel instead evaluates every pixel of the tiles
touched by a 3-sigma square, so pixels between 3 and 3.33 sigma may differ by alpha < 0.011 o.)

Four implementations (the first three are pure PyTorch and give the same result):

* ``geolrm_bench._reference.rasterize`` (``backend="reference"``): every Gaussian against every
  pixel, stable sort by depth, cumulative products. Obviously correct, O(N H W) memory: small
  cases and tests only.
* ``_rasterize_torch``: the same maths, tiled (16x16 px tiles), per-tile depth-sorted lists padded
  into ``[tiles, K, pixels]`` blocks processed in bounded chunks with the transmittance carried
  between chunks, early exit when every pixel of a chunk has terminated. Pure autograd, so it is
  differentiable in means, scales, quats, opacities and colours.
* ``_rasterize_pairs``: the same maths on a sparse list of (Gaussian, pixel) pairs inside each
  Gaussian's support box, sorted by (pixel, depth), with segmented log-space products and
  ``index_add``. O(pairs): much faster for small splats (training, low resolution); ``backend=
  "torch"`` picks it per view when the pair count is small (``method="auto"``), else the tiles.
* ``_render_gsplat``: ``gsplat.rasterization`` (CUDA only, imported lazily; importing this module
  never needs CUDA or gsplat).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from geolrm_bench import _reference
from geolrm_bench.cameras import intrinsics_to_pixels, opengl_to_opencv
from geolrm_bench.errors import BenchError
from geolrm_bench.model.gaussians import Gaussians

ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped (3DGS)
ALPHA_MAX = 0.99  # per-Gaussian alpha clamp (3DGS / official renderer)
T_MIN = 1e-4  # transmittance at which compositing stops (3DGS)
EPS2D = 0.3  # low-pass dilation of the 2D covariance, px^2 (3DGS, gsplat eps2d)
NEAR = 0.2  # view-z culling plane of the official renderer, world units
_POWER_MAX = 30.0  # exp(-30) ~ 1e-13: well below 1/255, still a normal float32


# --------------------------------------------------------------------------------------------
# cameras and projection
# --------------------------------------------------------------------------------------------
def opengl_to_w2c_opencv(c2w_opengl: Tensor) -> Tensor:  # [V, 4, 4] -> [V, 4, 4]
    """World-to-camera matrices in OpenCV axes from OpenGL camera-to-world matrices."""
    return torch.linalg.inv(opengl_to_opencv(c2w_opengl))


def quat_to_rotmat(quats: Tensor) -> Tensor:  # [..., 4] (w, x, y, z) -> [..., 3, 3]
    """Rotation matrices of (not necessarily unit) quaternions in (w, x, y, z) order."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:  # [N, 4], [N, 3] -> [N, 3, 3]
    """World covariance ``R S S^T R^T`` (scales are standard deviations in world units)."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # R @ diag(s)
    return M @ M.transpose(-1, -2)


@dataclass
class Projected:
    """Gaussians projected into V views (pixel units, OpenCV grid, centres at +0.5).

    Attributes:
        means2d: ``[V, N, 2]`` projected centres (u, v) in pixels.
        conics: ``[V, N, 3]`` entries (a, b, c) of the inverse dilated 2D covariance [[a, b], [b, c]].
        cov2d: ``[V, N, 2, 2]`` dilated 2D covariance in px^2.
        depths: ``[V, N]`` OpenCV view-space z of the centres (world units).
        opacities: ``[N]`` opacity in (0, 1).
        valid: ``[V, N]`` bool: in front of ``near``, finite, opacity >= 1/255.
        extent: ``[V, N, 2]`` half-size in px of the box holding the alpha >= 1/255 ellipse (no grad).
    """

    means2d: Tensor  # [V, N, 2]
    conics: Tensor  # [V, N, 3]
    cov2d: Tensor  # [V, N, 2, 2]
    depths: Tensor  # [V, N]
    opacities: Tensor  # [N]
    valid: Tensor  # [V, N]
    extent: Tensor  # [V, N, 2]


def project_gaussians(
    g: Gaussians,  # [N]
    w2c: Tensor,  # [V, 4, 4] OpenCV world-to-camera
    K_pix: Tensor,  # [V, 3, 3] pixel intrinsics
    height: int,
    width: int,
    near: float = NEAR,
    eps2d: float = EPS2D,
) -> Projected:
    """EWA projection (3DGS): ``Sigma_2d = J W Sigma W^T J^T + eps2d I`` in pixels.

    ``J`` is the Jacobian of the pinhole projection at the centre, with x/z and y/z clamped to the
    field of view widened by 30 % on each side (as 3DGS and gsplat do, to keep off-screen Gaussians
    from exploding). The projected centre itself is not clamped.
    """
    R = w2c[:, None, :3, :3]  # [V, 1, 3, 3]
    t = w2c[:, None, :3, 3]  # [V, 1, 3]
    p = (R @ g.means[None, :, :, None]).squeeze(-1) + t  # [V, N, 3]
    cov_c = R @ covariance_3d(g.quats, g.scales)[None] @ R.transpose(-1, -2)  # [V, N, 3, 3]

    x, y, z = p.unbind(-1)
    fx, fy = K_pix[:, 0, 0, None], K_pix[:, 1, 1, None]  # [V, 1]
    cx, cy = K_pix[:, 0, 2, None], K_pix[:, 1, 2, None]
    valid = z > near
    zs = torch.where(valid, z, torch.ones_like(z))  # safe divisor for culled ones
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    xc = zs * torch.maximum(torch.minimum(x / zs, lim_xp), -lim_xn)
    yc = zs * torch.maximum(torch.minimum(y / zs, lim_yp), -lim_yn)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * xc / zs**2, zero, fy / zs, -fy * yc / zs**2], -1)
    J = J.reshape(*zs.shape, 2, 3)  # [V, N, 2, 3]
    eye = torch.eye(2, dtype=p.dtype, device=p.device)
    cov2d = J @ cov_c @ J.transpose(-1, -2) + eps2d * eye  # [V, N, 2, 2]
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], -1)  # [V, N, 3]
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)  # [V, N, 2]

    o = g.opacities
    valid = valid & (o > ALPHA_MIN)[None] & torch.isfinite(means2d).all(-1)
    with torch.no_grad():
        m2 = 2.0 * torch.log((o * 255.0).clamp_min(1.0))  # squared Mahalanobis radius of alpha = 1/255
        extent = torch.stack([torch.sqrt(m2[None] * a), torch.sqrt(m2[None] * c)], -1) + 1e-3
    return Projected(means2d, conics, cov2d, z, o, valid, extent)


def _gaussian_alpha(
    dx: Tensor,  # [..., P]
    dy: Tensor,  # [..., P]
    conic: Tensor,  # [..., 3] broadcastable with dx[..., None]
    opacity: Tensor,  # [...]
) -> Tensor:  # [..., P]
    """3DGS alpha: ``min(0.99, o exp(-0.5 d^T Sigma^-1 d))`` with values below 1/255 set to 0."""
    a, b, c = conic[..., 0, None], conic[..., 1, None], conic[..., 2, None]
    power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    # far from the centre exp(-power) would underflow into denormals (very slow on x86 CPUs);
    # beyond power = 2 ln(255) ~ 11.1 alpha < 1/255 is dropped anyway, so clamping changes nothing
    power = power.clamp_max(_POWER_MAX)
    alpha = (opacity[..., None] * torch.exp(-power)).clamp_max(ALPHA_MAX)
    return torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))


# --------------------------------------------------------------------------------------------
# tiled rasterizer
# --------------------------------------------------------------------------------------------
def _pixel_boxes(
    means2d: Tensor,  # [N, 2] (detached)
    extent: Tensor,  # [N, 2]
    valid: Tensor,  # [N]
    height: int,
    width: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # x0, x1, y0, y1 [N] long (inclusive), ok [N] bool
    """Pixels whose centres (i + 0.5) lie in ``[m - e, m + e]``, clipped to the image; ok = non-empty."""
    mx, my = means2d[:, 0], means2d[:, 1]
    x0 = torch.ceil(mx - extent[:, 0] - 0.5)
    x1 = torch.floor(mx + extent[:, 0] - 0.5)
    y0 = torch.ceil(my - extent[:, 1] - 0.5)
    y1 = torch.floor(my + extent[:, 1] - 0.5)
    ok = valid & (x1 >= 0) & (x0 <= width - 1) & (y1 >= 0) & (y0 <= height - 1) & (x1 >= x0) & (y1 >= y0)
    x0 = torch.where(ok, x0.clamp(0, width - 1), torch.zeros_like(x0)).long()
    x1 = torch.where(ok, x1.clamp(0, width - 1), torch.zeros_like(x1)).long()
    y0 = torch.where(ok, y0.clamp(0, height - 1), torch.zeros_like(y0)).long()
    y1 = torch.where(ok, y1.clamp(0, height - 1), torch.zeros_like(y1)).long()
    return x0, x1, y0, y1, ok


def _depth_rank(depths: Tensor) -> Tensor:  # [N] -> [N] long: position in a stable sort by depth
    rank = torch.empty(depths.shape[0], dtype=torch.long, device=depths.device)
    rank[torch.argsort(depths, stable=True)] = torch.arange(depths.shape[0], device=depths.device)
    return rank


def _tile_lists(
    means2d: Tensor,  # [N, 2] (detached)
    extent: Tensor,  # [N, 2]
    depths: Tensor,  # [N]
    valid: Tensor,  # [N]
    height: int,
    width: int,
    tile: int,
) -> tuple[Tensor, Tensor, Tensor]:  # sorted Gaussian ids [M], per-tile counts [Tiles], offsets [Tiles]
    """Tile/Gaussian intersections sorted by (tile, depth), as 3DGS's key sort, on integers only."""
    tw, th = -(-width // tile), -(-height // tile)
    x0, x1, y0, y1, ok = _pixel_boxes(means2d, extent, valid, height, width)
    gid, tid = _sorted_box_cells(x0 // tile, x1 // tile, y0 // tile, y1 // tile, ok, tw, depths)
    counts = torch.bincount(tid, minlength=tw * th)
    offsets = torch.cumsum(counts, 0) - counts
    return gid, counts, offsets


def _sorted_box_cells(
    x0: Tensor,  # [N] long, first cell column of each Gaussian's box
    x1: Tensor,  # [N] long, last cell column (inclusive)
    y0: Tensor,  # [N] long
    y1: Tensor,  # [N] long
    ok: Tensor,  # [N] bool, Gaussian has a non-empty box
    row_cells: int,  # cells per row of the grid
    depths: Tensor,  # [N]
) -> tuple[Tensor, Tensor]:  # Gaussian ids [M], cell ids [M] (row-major), sorted by (cell, depth)
    """Expand each Gaussian's cell box into (Gaussian, cell) pairs sorted by (cell, depth).

    Integer-only key sort as in 3DGS; cells are tiles for the tiled path and pixels for the
    pair-list path.
    """
    N = x0.shape[0]
    dev = x0.device
    nx = x1 - x0 + 1
    cnt = torch.where(ok, nx * (y1 - y0 + 1), torch.zeros_like(nx))
    gid = torch.repeat_interleave(torch.arange(N, device=dev), cnt)
    start = torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
    local = torch.arange(gid.shape[0], device=dev) - start
    cell = (y0[gid] + local // nx[gid]) * row_cells + x0[gid] + local % nx[gid]
    order = torch.argsort(cell * N + _depth_rank(depths)[gid])
    return gid[order], cell[order]


def _rasterize_torch(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    feats: Tensor,  # [N, C]
    depths: Tensor,  # [N]
    valid: Tensor,  # [N]
    extent: Tensor,  # [N, 2]
    height: int,
    width: int,
    tile: int = 16,
    k_step: int = 64,
    budget: int = 1 << 22,
) -> tuple[Tensor, Tensor]:  # [H, W, C] accumulated features, [H, W] final transmittance
    """Tiled version of :func:`geolrm_bench._reference.rasterize` (same maths, same result).

    Non-empty tiles are sorted by list length and taken in chunks; each chunk's depth-sorted lists
    are padded with a null Gaussian (opacity 0) and processed ``k_step`` entries at a time as
    ``[tiles, k_step, tile*tile]`` blocks (about ``budget`` elements each), carrying transmittance
    and the "terminated" flag of every pixel from one block to the next.
    """
    N, C = feats.shape
    dtype, dev = means2d.dtype, means2d.device
    tw, th = -(-width // tile), -(-height // tile)
    P = tile * tile
    with torch.no_grad():
        sorted_ids, counts, offsets = _tile_lists(means2d.detach(), extent, depths.detach(), valid,
                                                  height, width, tile)
    # one null Gaussian at index N: alpha 0 everywhere
    m_ext = torch.cat([means2d, means2d.new_zeros(1, 2)], 0)
    c_ext = torch.cat([conics, conics.new_zeros(1, 3)], 0)
    o_ext = torch.cat([opacities, opacities.new_zeros(1)], 0)
    f_ext = torch.cat([feats, feats.new_zeros(1, C)], 0)

    ly, lx = torch.meshgrid(torch.arange(tile, device=dev), torch.arange(tile, device=dev), indexing="ij")
    ly, lx = ly.reshape(-1), lx.reshape(-1)  # [P]

    tiles = torch.nonzero(counts > 0, as_tuple=False).squeeze(1)
    tiles = tiles[torch.argsort(counts[tiles], descending=True, stable=True)]
    out_ids, out_acc, out_T = [], [], []
    per_tile = P * k_step
    chunk_tiles = max(1, budget // per_tile)
    for s in range(0, tiles.shape[0], chunk_tiles):
        t_ids = tiles[s:s + chunk_tiles]  # [Tc]
        cnt, off = counts[t_ids], offsets[t_ids]
        px = (t_ids % tw)[:, None] * tile + lx[None]  # [Tc, P] integer pixel coords
        py = (t_ids // tw)[:, None] * tile + ly[None]
        u, v = px.to(dtype) + 0.5, py.to(dtype) + 0.5
        T = torch.ones(t_ids.shape[0], P, dtype=dtype, device=dev)
        done = (px >= width) | (py >= height)  # padding pixels never hold the loop open
        acc = torch.zeros(t_ids.shape[0], P, C, dtype=dtype, device=dev)
        k0 = 0
        while True:
            k = torch.arange(k0, k0 + k_step, device=dev)
            has = k[None] < cnt[:, None]  # [Tc, K]
            pos = torch.where(has, off[:, None] + k[None], torch.zeros_like(has, dtype=torch.long))
            gidx = torch.where(has, sorted_ids[pos], torch.full_like(pos, N))
            m, cn = m_ext[gidx], c_ext[gidx]  # [Tc, K, 2], [Tc, K, 3]
            dx = u[:, None, :] - m[..., 0, None]  # [Tc, K, P]
            dy = v[:, None, :] - m[..., 1, None]
            alpha = _gaussian_alpha(dx, dy, cn, o_ext[gidx])  # [Tc, K, P]
            one_m = 1.0 - alpha  # >= 0.01
            T_after = T[:, None, :] * torch.cumprod(one_m, dim=1)  # [Tc, K, P]
            with torch.no_grad():  # 3DGS stop rule; prefix-closed because T_after only decreases
                keep = (T_after >= T_MIN) & ~done[:, None, :]
                done = done | ~keep[:, -1, :]
                n_keep = keep.sum(1)  # [Tc, P]
            weights = alpha * (T_after / one_m) * keep.to(dtype)  # a_i T_before_i on kept entries
            acc = acc + torch.einsum("tkp,tkc->tpc", weights, f_ext[gidx])
            last = T_after.gather(1, (n_keep - 1).clamp_min(0)[:, None, :]).squeeze(1)
            T = torch.where(n_keep > 0, last, T)
            k0 += k_step
            active = ~done.all(1) & (cnt > k0)  # [Tc]: tiles that still need work
            if bool(active.all()):
                continue
            fin = ~active
            out_ids.append(t_ids[fin])
            out_acc.append(acc[fin])
            out_T.append(T[fin])
            if not bool(active.any()):
                break
            t_ids, cnt, off, u, v = t_ids[active], cnt[active], off[active], u[active], v[active]
            T, done, acc = T[active], done[active], acc[active]

    n_tiles = tw * th
    acc_full = torch.zeros(n_tiles, P, C, dtype=dtype, device=dev)
    T_full = torch.ones(n_tiles, P, dtype=dtype, device=dev)
    if out_ids:
        ids = torch.cat(out_ids)
        acc_full = acc_full.index_copy(0, ids, torch.cat(out_acc))
        T_full = T_full.index_copy(0, ids, torch.cat(out_T))
    acc_img = acc_full.reshape(th, tw, tile, tile, C).permute(0, 2, 1, 3, 4).reshape(th * tile, tw * tile, C)
    T_img = T_full.reshape(th, tw, tile, tile).permute(0, 2, 1, 3).reshape(th * tile, tw * tile)
    return acc_img[:height, :width], T_img[:height, :width]


# --------------------------------------------------------------------------------------------
# pair-list rasterizer (sparse: one entry per Gaussian/pixel pair inside the alpha >= 1/255 box)
# --------------------------------------------------------------------------------------------
def _num_pairs(extent: Tensor, means2d: Tensor, valid: Tensor, height: int, width: int) -> int:
    x0, x1, y0, y1, ok = _pixel_boxes(means2d.detach(), extent, valid, height, width)
    return int(torch.where(ok, (x1 - x0 + 1) * (y1 - y0 + 1), torch.zeros_like(x0)).sum())


def _rasterize_pairs(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    feats: Tensor,  # [N, C]
    depths: Tensor,  # [N]
    valid: Tensor,  # [N]
    extent: Tensor,  # [N, 2]
    height: int,
    width: int,
) -> tuple[Tensor, Tensor]:  # [H, W, C] accumulated features, [H, W] final transmittance
    """Sparse version of :func:`geolrm_bench._reference.rasterize` (same maths): all (Gaussian, pixel)
    pairs with the pixel inside the Gaussian's alpha >= 1/255 box, sorted by (pixel, depth); the
    per-pixel exclusive products ``T_i`` are segmented sums of ``log(1 - a)`` (float64), and the
    results are scattered with ``index_add``. Memory and time O(pairs): fastest for small splats
    (low resolution, training); the tiled path is used for large scenes (early termination).
    """
    C = feats.shape[1]
    dtype, dev = means2d.dtype, means2d.device
    with torch.no_grad():
        x0, x1, y0, y1, ok = _pixel_boxes(means2d.detach(), extent, valid, height, width)
        gid, pix = _sorted_box_cells(x0, x1, y0, y1, ok, width, depths.detach())
        M = gid.shape[0]
        first = torch.ones(M, dtype=torch.bool, device=dev)
        first[1:] = pix[1:] != pix[:-1]
        seg_start = torch.cummax(torch.where(first, torch.arange(M, device=dev), torch.zeros_like(pix)), 0)[0]
    u = (pix % width).to(dtype) + 0.5
    v = (pix // width).to(dtype) + 0.5
    m = means2d[gid]  # [M, 2]
    alpha = _gaussian_alpha((u - m[:, 0])[:, None], (v - m[:, 1])[:, None], conics[gid], opacities[gid])[:, 0]
    log_1m = torch.log1p(-alpha).double()  # [M] <= 0
    cs = torch.cumsum(log_1m, 0)  # inclusive running sum over all pairs
    base = (cs - log_1m)[seg_start]  # running sum before each pixel's first pair
    log_T_after = cs - base
    with torch.no_grad():
        keep = log_T_after >= math.log(T_MIN)  # 3DGS stop rule, prefix-closed per pixel
    keep_f = keep.to(dtype)
    weights = alpha * torch.exp(log_T_after - log_1m).to(dtype) * keep_f  # a_i T_before_i
    P = height * width
    acc = torch.zeros(P, C, dtype=dtype, device=dev).index_add(0, pix, weights[:, None] * feats[gid])
    log_T = torch.zeros(P, dtype=torch.float64, device=dev).index_add(0, pix, log_1m * keep.double())
    return acc.reshape(height, width, C), torch.exp(log_T).to(dtype).reshape(height, width)


# --------------------------------------------------------------------------------------------
# gsplat (CUDA)
# --------------------------------------------------------------------------------------------
def _render_gsplat(
    g: Gaussians,  # [N]
    w2c: Tensor,  # [V, 4, 4] OpenCV
    K_pix: Tensor,  # [V, 3, 3]
    height: int,
    width: int,
    bg: Tensor,  # [3]
    near: float,
) -> dict[str, Tensor]:
    """``gsplat.rasterization`` in "RGB+D" mode: accumulated (not normalised) depth, bg on RGB only."""
    try:
        import gsplat  # lazy: needs CUDA at call time only
    except ImportError as e:  # pragma: no cover - gsplat is a dependency
        raise BenchError(f"backend 'gsplat' needs the gsplat package ({e})") from e
    V = w2c.shape[0]
    colors, alphas, _ = gsplat.rasterization(
        means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=g.colors,
        viewmats=w2c, Ks=K_pix, width=width, height=height, near_plane=near, eps2d=EPS2D,
        packed=False, render_mode="RGB+D", backgrounds=bg[None].expand(V, 3).contiguous(),
        rasterize_mode="classic",
    )  # [V, H, W, 4], [V, H, W, 1]
    return {
        "rgb": colors[..., :3].permute(0, 3, 1, 2),
        "alpha": alphas.permute(0, 3, 1, 2),
        "depth": colors[..., 3:].permute(0, 3, 1, 2),
    }


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
def render_gaussians(
    g: Gaussians,  # [N] or [B, N]
    c2w_opengl: Tensor,  # [V, 4, 4] or [B, V, 4, 4]
    K_norm: Tensor,  # [V, 3, 3] or [B, V, 3, 3]
    height: int,
    width: int,
    background: Sequence[float] | Tensor = (1.0, 1.0, 1.0),
    backend: str = "auto",
    near: float = NEAR,
    tile: int = 16,
    budget: int = 1 << 22,
    method: str = "auto",
    pair_budget: int = 1 << 21,
) -> dict[str, Tensor]:
    """Render Gaussians into V views.

    Args:
        g: Gaussians with activated parameters in the world frame (``[N]``, or ``[B, N]`` with
            batched cameras; outputs then get a leading B).
        c2w_opengl: OpenGL camera-to-world matrices ``[V, 4, 4]``.
        K_norm: normalised intrinsics ``[V, 3, 3]`` (fx/W, fy/H, cx/W, cy/H).
        height, width: output size in pixels.
        background: RGB in [0, 1] composited under the splats (``rgb += T_final * bg``).
        backend: ``"auto"`` (gsplat for CUDA tensors, else ``"torch"``), ``"torch"`` (our tiled
            rasterizer), ``"reference"`` (tile-free, small cases only) or ``"gsplat"`` (CUDA).
        near: view-z culling plane in world units (0.2 as the official renderer).
        tile, budget: tile size in px and elements per block of the tiled torch rasterizer.
        method: torch backend algorithm: ``"tiles"``, ``"pairs"`` (sparse Gaussian/pixel pairs) or
            ``"auto"``: pairs when a view has at most ``pair_budget`` pairs, else tiles. Both give
            the reference's result; pairs are faster for small splats, tiles stop early in dense scenes.

    Returns:
        ``rgb`` ``[V, 3, H, W]``, ``alpha`` ``[V, 1, H, W]``, ``depth`` ``[V, 1, H, W]`` (OpenCV
        view z, alpha-weighted sum, not normalised, 0 on empty pixels).
    """
    if g.means.dim() == 3:
        outs = [render_gaussians(g[b], c2w_opengl[b], K_norm[b], height, width, background, backend,
                                 near, tile, budget, method, pair_budget) for b in range(g.means.shape[0])]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}
    if c2w_opengl.dim() != 3 or c2w_opengl.shape[-2:] != (4, 4):
        raise BenchError(f"c2w_opengl must be [V, 4, 4], got {tuple(c2w_opengl.shape)}")
    if K_norm.shape != (c2w_opengl.shape[0], 3, 3):
        raise BenchError(f"K_norm must be [V, 3, 3] with V = {c2w_opengl.shape[0]}, "
                         f"got {tuple(K_norm.shape)}")
    if backend == "auto":
        backend = "gsplat" if g.means.is_cuda else "torch"
    if method not in ("auto", "tiles", "pairs"):
        raise BenchError(f"unknown torch rasterizer method {method!r} (auto, tiles, pairs)")
    if backend not in ("torch", "reference", "gsplat"):
        raise BenchError(f"unknown rasterizer backend {backend!r} (auto, torch, reference, gsplat)")
    dtype, dev = g.means.dtype, g.means.device
    bg = torch.as_tensor(background, dtype=dtype, device=dev).reshape(3)
    c2w = c2w_opengl.to(dtype=dtype, device=dev)
    w2c = opengl_to_w2c_opencv(c2w)
    K_pix = intrinsics_to_pixels(K_norm.to(dtype=dtype, device=dev), height, width)
    if backend == "gsplat":
        if not g.means.is_cuda:
            raise BenchError("backend 'gsplat' needs CUDA tensors; use backend='torch' on the CPU")
        return _render_gsplat(g, w2c, K_pix, height, width, bg, near)

    proj = project_gaussians(g, w2c, K_pix, height, width, near=near)
    feats = torch.cat([g.colors[None].expand(w2c.shape[0], -1, -1), proj.depths[..., None]], -1)  # [V, N, 4]
    rgb, alpha, depth = [], [], []
    for i in range(w2c.shape[0]):
        args = (proj.means2d[i], proj.conics[i], proj.opacities, feats[i], proj.depths[i], proj.valid[i])
        if backend == "reference":
            acc, T = _reference.rasterize(*args, height, width)
        else:
            use_pairs = method == "pairs" or (
                method == "auto"
                and _num_pairs(proj.extent[i], proj.means2d[i], proj.valid[i], height, width) <= pair_budget)
            if use_pairs:
                acc, T = _rasterize_pairs(*args, proj.extent[i], height, width)
            else:
                acc, T = _rasterize_torch(*args, proj.extent[i], height, width, tile=tile, budget=budget)
        rgb.append((acc[..., :3] + T[..., None] * bg).permute(2, 0, 1))
        alpha.append((1.0 - T)[None])
        depth.append(acc[..., 3:].permute(2, 0, 1))
    return {"rgb": torch.stack(rgb), "alpha": torch.stack(alpha), "depth": torch.stack(depth)}

