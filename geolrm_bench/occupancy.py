"""Occupancy ground truth: voxelize the 40 depth maps of one object (paper A.1).

Conventions (see docs/ARCHITECTURE.md):

- World frame: the normalised object frame, Z-up, object inside [-0.5, 0.5]^3, world units.
- Cameras: ``c2w_opencv`` [V, 4, 4] camera-to-world, columns = camera axes (OpenCV: right,
  down, forward) + position. ``intrinsics`` [V, 3, 3] are *normalised*
  (``[[fx/W, 0, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``) and scaled here to pixels of each depth
  map; pixel centres at +0.5 (u right, v down).
- Depth: z-depth along the camera's forward axis (not ray length), world units; 0, negative
  or non-finite = no surface. Depth is expected to be *cleaned* already (the official rule,
  ``geolrm_bench.gobjaverse``); :func:`voxelize_object` reads and cleans it for you.

The voxel index rule is the official one: a world point ``p`` (back-projected as
``p_w = R (d K^-1 [u, v, 1]) + t``) falls in voxel ``round((p + 0.5) * R)`` per axis, clamped
to ``[0, R - 1]``; R = 128 by default (64 and 256 also used). Voxel ``k`` therefore covers
``[(k - 0.5) / R - 0.5, (k + 0.5) / R - 0.5)`` and has its centre at ``k / R - 0.5`` (the two
border voxels also collect the clamped points). Rounding is half-to-even (``numpy.rint``).
Note the official model's anchors are grid *vertices* ``-0.5 + k / 127`` (a 127/128
mismatch of the official code, kept there on purpose): :func:`voxel_centers` follows the
voxelizer, not the model.

Storage: ``<object>/pts.npy`` holds the sorted unique voxel indices as a uint8 array
[N, 3] (axis order x, y, z; rows in C order of the dense ``[R, R, R]`` grid, i.e. sorted by
x, then y, then z), the official layout that the official training code reads unchanged.
uint8 holds indices up to 255, so it also fits R = 256; resolutions above 256 store uint16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geolrm_bench.cameras import intrinsics_to_pixels
from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import save_npy_atomic

DEFAULT_RESOLUTION = 128
SUPPORTED_RESOLUTIONS = (64, 128, 256)
PTS_FILENAME = "pts.npy"
PAPER_OCCUPANCY_FRACTION = 0.05  # paper A.1: "about 5% of voxels are occupied"


def index_dtype(resolution: int) -> np.dtype:
    """Storage dtype of voxel indices at ``resolution``: uint8 up to R = 256, else uint16."""
    _check_resolution(resolution)
    return np.dtype(np.uint8) if resolution <= 256 else np.dtype(np.uint16)


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
        raise BenchError(f"voxel resolution must be an integer, got {resolution!r}")
    if not 2 <= int(resolution) <= 65536:
        raise BenchError(f"voxel resolution must be in [2, 65536] (64, 128, 256 are usual), got {resolution}")
    return int(resolution)


def _check_cameras(depths, c2w_opencv, intrinsics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert to numpy: depths [V, H, W], c2w [V, 4, 4], K [V, 3, 3] float64."""
    depths = _to_numpy(depths)
    c2w = _to_numpy(c2w_opencv).astype(np.float64, copy=False)
    K = _to_numpy(intrinsics).astype(np.float64, copy=False)
    if depths.ndim == 4 and depths.shape[1] == 1:  # [V, 1, H, W] as in ViewBatch
        depths = depths[:, 0]
    if depths.ndim == 2:
        depths = depths[None]
    if depths.ndim != 3:
        raise BenchError(f"depths must be [V, H, W] (or [V, 1, H, W]), got shape {depths.shape}")
    V = depths.shape[0]
    if c2w.shape == (4, 4):
        c2w = np.broadcast_to(c2w, (V, 4, 4))
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (V, 3, 3))
    if c2w.shape != (V, 4, 4):
        raise BenchError(f"c2w_opencv must be [V, 4, 4] with V = {V} depth maps, got shape {c2w.shape}")
    if K.shape != (V, 3, 3):
        raise BenchError(f"intrinsics must be [V, 3, 3] with V = {V} depth maps, got shape {K.shape}")
    if not (np.isfinite(c2w).all() and np.isfinite(K).all()):
        raise BenchError("cameras contain NaN or inf")
    if np.any(np.abs(np.linalg.det(K)) < 1e-12):
        raise BenchError("intrinsics are singular (focal length 0?)")
    return depths, c2w, K


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def backproject_depth(depths, c2w_opencv, intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """World points of every valid depth pixel, the plain per-point formula, float64.

    Args:
        depths: [V, H, W] z-depth, world units, 0 / negative / non-finite = invalid.
        c2w_opencv: [V, 4, 4] camera-to-world, OpenCV axes.
        intrinsics: [V, 3, 3] normalised intrinsics.
    Returns:
        points [N, 3] float64 world coordinates, view [N] int index of the view of each point.
    """
    depths, c2w, K = _check_cameras(depths, c2w_opencv, intrinsics)
    V, H, W = depths.shape
    Kinv = np.linalg.inv(intrinsics_to_pixels(K, H, W))  # [V, 3, 3]
    pts, views = [], []
    for i in range(V):
        d = depths[i].astype(np.float64)
        valid = np.isfinite(d) & (d > 0)
        v, u = np.nonzero(valid)
        pix = np.stack([u + 0.5, v + 0.5, np.ones(u.shape)], axis=0)  # [3, n]
        cam = d[v, u] * (Kinv[i] @ pix)  # [3, n]
        world = c2w[i, :3, :3] @ cam + c2w[i, :3, 3:4]  # [3, n]
        pts.append(world.T)
        views.append(np.full(u.shape, i))
    if not pts:
        return np.zeros((0, 3)), np.zeros(0, dtype=int)
    return np.concatenate(pts), np.concatenate(views)


def points_to_voxels(points: np.ndarray, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """Voxel index of each world point [N, 3] -> [N, 3] int64 (not unique): the official rule.

    ``round((p + 0.5) * R)`` clamped to [0, R - 1], half-to-even rounding.
    """
    R = _check_resolution(resolution)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return np.clip(np.rint((p + 0.5) * R), 0, R - 1).astype(np.int64)


def voxelize_points(points: np.ndarray, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """Sorted unique voxel indices [N, 3] (storage dtype) of world points [M, 3]."""
    R = _check_resolution(resolution)
    idx = points_to_voxels(points, R)
    grid = np.zeros(R**3, dtype=bool)
    grid[(idx[:, 0] * R + idx[:, 1]) * R + idx[:, 2]] = True
    return _flat_to_indices(np.flatnonzero(grid), R)


def _flat_to_indices(flat: np.ndarray, R: int) -> np.ndarray:
    """Linear C-order indices of an [R, R, R] grid -> [N, 3] voxel indices (storage dtype)."""
    out = np.empty((flat.size, 3), dtype=index_dtype(R))
    out[:, 0] = flat // (R * R)
    out[:, 1] = (flat // R) % R
    out[:, 2] = flat % R
    return out


def voxelize_depth(
    depths,  # [V, H, W] (or [V, 1, H, W]) z-depth, world units, 0 = invalid
    c2w_opencv,  # [V, 4, 4] camera-to-world, OpenCV axes
    intrinsics,  # [V, 3, 3] normalised
    resolution: int = DEFAULT_RESOLUTION,
) -> np.ndarray:  # [N, 3] uint8 (uint16 for R > 256), sorted C order
    """Occupied voxels of the back-projected depth maps: the fast path.

    Every valid pixel (depth finite and > 0) of every view is back-projected,
    ``p_w = R (d K^-1 [u + 0.5, v + 0.5, 1]) + t`` (OpenCV camera, normalised K scaled to the
    depth map's pixels), and lands in voxel ``round((p_w + 0.5) * resolution)`` clamped to
    ``[0, resolution - 1]``. Unique voxels are marked in a flat ``resolution^3`` bool grid
    (O(N), no sort) and returned in C order. The camera and the voxel scaling are folded
    into one affine map per view, ``d * (A @ [u, v, 1]) + b``, whose column and row terms
    are computed once per view and broadcast over the bounding box of its valid pixels, so
    each pixel costs an add, a mask gather and a few multiply-adds; float64 throughout.
    Accepts numpy arrays or torch tensors.

    :func:`geolrm_bench._reference.voxelize_depth` is the plain version; the outputs are identical
    except, in principle, for a point within ~1e-12 voxel of a rounding boundary, where the
    two float64 evaluation orders could round differently (the tests check equality).
    """
    R = _check_resolution(resolution)
    depths, c2w, K = _check_cameras(depths, c2w_opencv, intrinsics)
    V, H, W = depths.shape
    Kinv = np.linalg.inv(intrinsics_to_pixels(K, H, W))  # [V, 3, 3]
    # voxel coordinate (before rounding) = d * (A @ [u, v, 1]) + b
    A = R * (c2w[:, :3, :3] @ Kinv)  # [V, 3, 3]
    b = R * (c2w[:, :3, 3] + 0.5)  # [V, 3]
    grid = np.zeros(R**3, dtype=bool)
    u_all = np.arange(W, dtype=np.float64) + 0.5  # pixel centres
    v_all = np.arange(H, dtype=np.float64) + 0.5
    for i in range(V):  # loop over views only; pixels are vectorized
        di = depths[i]
        with np.errstate(invalid="ignore"):
            valid = (di > 0) & (di < np.inf)  # NaN and +inf compare False: dropped
        rows = np.flatnonzero(valid.any(axis=1))
        if rows.size == 0:
            continue
        r0, r1 = rows[0], rows[-1] + 1  # bounding box of the valid pixels
        cols = np.flatnonzero(valid[r0:r1].any(axis=0))
        c0, c1 = cols[0], cols[-1] + 1
        m = valid[r0:r1, c0:c1]
        d = di[r0:r1, c0:c1][m].astype(np.float64)
        lin = None
        for a in range(3):
            # per-column plus per-row term of the affine map, broadcast over the box, then masked
            c = ((A[i, a, 0] * u_all[c0:c1] + A[i, a, 2])[None, :] + (A[i, a, 1] * v_all[r0:r1])[:, None])[m]
            c *= d
            c += b[i, a]
            np.rint(c, out=c)
            np.clip(c, 0, R - 1, out=c)
            if lin is None:
                lin = c
            else:
                lin *= R
                lin += c
        grid[lin.astype(np.intp)] = True
    return _flat_to_indices(np.flatnonzero(grid), R)


# ----------------------------------------------------------------------------------------
# dense grid <-> indices, voxel centres, statistics


def indices_to_grid(indices: np.ndarray, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """Voxel indices [N, 3] -> dense bool grid [R, R, R] indexed ``grid[x, y, z]``."""
    R = _check_resolution(resolution)
    idx = _check_indices(indices, R)
    grid = np.zeros((R, R, R), dtype=bool)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return grid


def grid_to_indices(grid: np.ndarray) -> np.ndarray:
    """Dense bool grid [R, R, R] -> sorted voxel indices [N, 3] (storage dtype, C order)."""
    grid = np.asarray(grid)
    if grid.ndim != 3 or len(set(grid.shape)) != 1:
        raise BenchError(f"occupancy grid must be cubic [R, R, R], got shape {grid.shape}")
    R = grid.shape[0]
    return _flat_to_indices(np.flatnonzero(grid.reshape(-1)), R)


def voxel_centers(indices: np.ndarray, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """World-space centres [N, 3] float32 of voxel indices [N, 3]: ``k / R - 0.5``.

    The centre of the voxel whose points round to ``k`` under the index rule (see module doc);
    these are not the official model's anchor vertices ``-0.5 + k / 127``.
    """
    R = _check_resolution(resolution)
    idx = _check_indices(indices, R)
    return (idx.astype(np.float64) / R - 0.5).astype(np.float32)


def _check_indices(indices: np.ndarray, R: int, name: str = "voxel indices") -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.shape[1] != 3:
        raise BenchError(f"{name} must be [N, 3], got shape {idx.shape}")
    if idx.size and (not np.issubdtype(idx.dtype, np.integer)):
        raise BenchError(f"{name} must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= R):
        raise BenchError(f"{name} out of range [0, {R - 1}] (min {idx.min()}, max {idx.max()})")
    return idx


@dataclass
class OccupancyStats:
    """Summary of one object's occupancy at resolution R (counts in voxels)."""

    voxels: int  # occupied voxels N
    resolution: int
    grid_fraction: float  # N / R^3
    bbox_voxels: int  # voxels in the axis-aligned bounding box of the occupied voxels
    bbox_fraction: float  # N / bbox_voxels (0 when empty)
    bbox_extent: tuple[int, int, int]  # bbox size in voxels per axis (x, y, z)


def occupancy_stats(indices: np.ndarray, resolution: int = DEFAULT_RESOLUTION) -> OccupancyStats:
    """Counts of occupied voxels, fraction of the R^3 grid and of the occupied bounding box."""
    R = _check_resolution(resolution)
    idx = _check_indices(indices, R).astype(np.int64)
    n = int(idx.shape[0])
    if n == 0:
        return OccupancyStats(0, R, 0.0, 0, 0.0, (0, 0, 0))
    ext = idx.max(axis=0) - idx.min(axis=0) + 1
    bbox = int(np.prod(ext))
    return OccupancyStats(n, R, n / R**3, bbox, n / bbox, (int(ext[0]), int(ext[1]), int(ext[2])))


# ----------------------------------------------------------------------------------------
# pts.npy I/O


def save_pts(path: str | Path, indices: np.ndarray, resolution: int = DEFAULT_RESOLUTION) -> Path:
    """Write voxel indices to ``path`` (normally ``<object>/pts.npy``) atomically, official layout.

    Rows are sorted (C order) and unique so the bytes are deterministic; dtype uint8
    (uint16 above R = 256).
    """
    R = _check_resolution(resolution)
    idx = _check_indices(indices, R)
    grid = np.zeros(R**3, dtype=bool)
    i64 = idx.astype(np.int64)
    grid[(i64[:, 0] * R + i64[:, 1]) * R + i64[:, 2]] = True
    return save_npy_atomic(path, np.ascontiguousarray(_flat_to_indices(np.flatnonzero(grid), R)))


def load_pts(path: str | Path, resolution: int | None = None) -> np.ndarray:
    """Read a ``pts.npy`` [N, 3] integer array; bad files raise :class:`BenchError` naming them.

    With ``resolution`` the indices are also checked to lie in ``[0, resolution - 1]``.
    """
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BenchError("file not found", path) from None
    except (ValueError, OSError, EOFError) as e:
        raise BenchError(f"unreadable .npy ({one_line(e, None, typed=False)})", path) from None
    if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise BenchError(f"expected an integer [N, 3] voxel array, got {arr.dtype} {arr.shape}", path)
    if resolution is not None:
        R = _check_resolution(resolution)
        if arr.size and (arr.min() < 0 or arr.max() >= R):
            raise BenchError(f"voxel indices out of range [0, {R - 1}]", path)
    return arr


# ----------------------------------------------------------------------------------------
# one object on disk (GObjaverse format)


@dataclass
class ObjectOccupancy:
    """Result of voxelizing one GObjaverse-format object folder."""

    indices: np.ndarray  # [N, 3] uint8 (uint16 above R = 256), sorted C order
    resolution: int
    views_used: int  # views with at least one valid depth pixel
    views_total: int
    valid_pixels: int
    seconds: float  # reading + cleaning + voxelization
    timings: dict[str, float] = field(default_factory=dict)


def read_object_depths(
    object_dir: str | Path, views: list[int] | None = None, clean: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth maps [V, H, W] float32, c2w_opencv [V, 4, 4], normalised K [V, 3, 3] of an object folder.

    Reads only each view's JSON and ``_nd.exr`` (no PNG decoding). With ``clean`` the official
    rule is applied (``geolrm_bench.gobjaverse.clean_depth``: depth nearer than camera distance
    - 0.867 dropped, valid mask eroded 3x3). Missing/unreadable files raise BenchError naming them.
    """
    from geolrm_bench import gobjaverse  # engineer 1's module; imported lazily
    from geolrm_bench.cameras import NUM_VIEWS

    object_dir = Path(object_dir)
    if not object_dir.is_dir():
        raise BenchError("object folder not found", object_dir)
    idx = list(range(NUM_VIEWS)) if views is None else [int(v) for v in views]
    depths, c2ws, Ks = [], [], []
    for i in idx:
        p = gobjaverse.view_paths(object_dir, i)
        cam = gobjaverse.read_view_camera(p["json"])  # a non-rotation fails this object, named
        _, depth = gobjaverse.read_nd_exr(p["exr"])
        if clean:
            depth = gobjaverse.clean_depth(depth, cam.distance)
        if depths and depth.shape != depths[0].shape:
            raise BenchError(f"depth size {depth.shape} differs from view {idx[0]}'s {depths[0].shape}",
                             p["exr"])
        depths.append(np.asarray(depth, dtype=np.float32))
        c2ws.append(cam.c2w_opencv)
        Ks.append(cam.intrinsics)
    if not depths:
        raise BenchError("no views requested", object_dir)
    return np.stack(depths), np.stack(c2ws).astype(np.float64), np.stack(Ks).astype(np.float64)


def voxelize_object(
    object_dir: str | Path, resolution: int = DEFAULT_RESOLUTION, views: list[int] | None = None
) -> ObjectOccupancy:
    """Voxelize a GObjaverse-format object folder (default: all 40 views, cleaned depth)."""
    object_dir = Path(object_dir)
    t0 = time.perf_counter()
    depths, c2w, K = read_object_depths(object_dir, views, clean=True)
    t1 = time.perf_counter()
    try:
        idx = voxelize_depth(depths, c2w, K, resolution)
    except BenchError as e:
        raise BenchError(str(e), object_dir) from None
    t2 = time.perf_counter()
    valid = np.isfinite(depths) & (depths > 0)
    return ObjectOccupancy(
        indices=idx,
        resolution=int(resolution),
        views_used=int(valid.reshape(valid.shape[0], -1).any(axis=1).sum()),
        views_total=int(depths.shape[0]),
        valid_pixels=int(valid.sum()),
        seconds=t2 - t0,
        timings={"read": t1 - t0, "voxelize": t2 - t1},
    )
