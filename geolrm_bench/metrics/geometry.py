"""Geometry metrics: surface sampling, Chamfer distance, F-score, prediction points.

All point sets are ``[N, 3]`` float arrays in ONE world frame chosen by the caller:
either the dataset's ground-truth frame (the paper aligns predictions to it) or
the normalised object frame (Z-up, object in [-0.5, 0.5]^3). The metrics do not
align or rescale anything; :func:`geometry_metrics` records the frame the caller
names under the key ``frame``.

Distances are Euclidean, in the frame's units. Nearest neighbours come from
``scipy.spatial.cKDTree`` (``workers=-1``); ``geolrm_bench._reference.nearest_distances`` is
the brute-force float64 version the tests compare against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_NUM_POINTS = 16000
DEFAULT_TAUS = (0.2,)
DEFAULT_OPACITY_THRESHOLD = 0.05  # Gaussians with opacity <= this are not counted as surface


def as_points(x: Any, name: str = "points") -> np.ndarray:
    """``[N, 3]`` float64 array from a numpy array / torch tensor / list.

    Raises:
        ValueError: wrong shape, no points, or NaN/inf coordinates (never a silent number).
    """
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{name}: expected an [N, 3] point array, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name}: empty point set (0 points)")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a).all(axis=1)).sum())
        raise ValueError(f"{name}: {bad} of {a.shape[0]} points have NaN or infinite coordinates")
    return a


# --------------------------------------------------------------------------- sampling
def sample_surface_points(mesh, n: int = DEFAULT_NUM_POINTS, seed: int | None = 0,
                          return_faces: bool = False):
    """Sample ``n`` points uniformly (area-weighted) on a triangle mesh's surface.

    A face is drawn with probability proportional to its area, then a uniform point
    in it by folded barycentric coordinates. Uses its own ``numpy.random.Generator``
    seeded with ``seed`` (same seed, same mesh -> same points), never a global RNG.

    Args:
        mesh: ``trimesh.Trimesh`` (or any object with ``vertices [V, 3]`` and ``faces [F, 3]``).
        n: number of points.
        seed: generator seed (``None`` = fresh entropy).
        return_faces: also return the face index ``[n]`` of each point.

    Returns:
        ``[n, 3]`` float64 points in the mesh's frame (and ``[n]`` int64 faces).
    """
    if n <= 0:
        raise ValueError(f"sample_surface_points: n must be positive, got {n}")
    vertices = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), dtype=np.int64)
    if faces.ndim != 2 or faces.shape[0] == 0 or faces.shape[1] != 3:
        raise ValueError(f"sample_surface_points: mesh has no triangles (faces shape {faces.shape})")
    if not np.isfinite(vertices).all():
        raise ValueError("sample_surface_points: mesh has NaN or infinite vertices")
    tri = vertices[faces]  # [F, 3, 3]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    areas = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)
    total = areas.sum()
    if not total > 0:
        raise ValueError("sample_surface_points: mesh has zero surface area")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(areas)
    face = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").clip(0, len(areas) - 1)
    uv = rng.random((n, 2))
    flip = uv.sum(axis=1) > 1.0
    uv[flip] = 1.0 - uv[flip]  # fold the upper triangle of the unit square back
    pts = tri[face, 0] + uv[:, :1] * e1[face] + uv[:, 1:] * e2[face]
    return (pts, face) if return_faces else pts


def _subsample(points: np.ndarray, n: int | None, seed: int | None,
               weights: np.ndarray | None = None) -> np.ndarray:
    """At most ``n`` rows: uniform without replacement, or ``n`` draws with replacement ∝ weights."""
    if n is None:
        return points
    rng = np.random.default_rng(seed)
    if weights is not None:
        p = weights / weights.sum()
        return points[rng.choice(len(points), size=n, replace=True, p=p)]
    if len(points) <= n:
        return points
    return points[np.sort(rng.choice(len(points), size=n, replace=False))]


# --------------------------------------------------------------------------- distances
def nearest_distances(query, reference) -> np.ndarray:
    """Euclidean distance ``[N]`` from each ``query`` point to its nearest ``reference`` point."""
    from scipy.spatial import cKDTree

    q = as_points(query, "query")
    r = as_points(reference, "reference")
    d, _ = cKDTree(r).query(q, k=1, workers=-1)
    return d


def _chamfer_from(d_pg: np.ndarray, d_gp: np.ndarray, squared: bool) -> float:
    if squared:
        return 0.5 * (float(np.mean(d_pg ** 2)) + float(np.mean(d_gp ** 2)))
    return 0.5 * (float(np.mean(d_pg)) + float(np.mean(d_gp)))


def chamfer_distance(pred, gt, squared: bool = False) -> float:
    """Symmetric Chamfer distance between two point sets.

    ``CD = (mean_p min_g |p - g| + mean_g min_p |g - p|) / 2``: the MEAN of the two
    directions' mean nearest-neighbour distance. Default: plain Euclidean distances
    (the "L1" Chamfer, in frame units); ``squared=True`` averages squared distances
    (the "L2" Chamfer, in squared units). Some papers SUM the two directions (2x).

    Args:
        pred: ``[N, 3]`` predicted points.
        gt: ``[M, 3]`` ground-truth points, same frame.
    """
    return _chamfer_from(nearest_distances(pred, gt), nearest_distances(gt, pred), squared)


def _fscores_from(d_pg: np.ndarray, d_gp: np.ndarray, taus: Iterable[float]) -> dict[float, dict]:
    out = {}
    for tau in taus:
        tau = float(tau)
        if not tau > 0:
            raise ValueError(f"fscore: threshold tau must be positive, got {tau}")
        precision = float(np.mean(d_pg < tau))
        recall = float(np.mean(d_gp < tau))
        f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        out[tau] = {"fscore": f, "precision": precision, "recall": recall}
    return out


def fscore(pred, gt, taus: Sequence[float] | float = DEFAULT_TAUS) -> dict[float, float]:
    """F-score at each threshold: harmonic mean of precision and recall.

    precision = fraction of ``pred`` points with a ``gt`` point closer than ``tau``
    (strictly), recall = fraction of ``gt`` points with a ``pred`` point closer than
    ``tau``; F = 2PR / (P + R), 0 when both are 0. ``tau`` in frame units.

    Returns:
        ``{tau: fscore}`` (values in [0, 1]).
    """
    taus = (taus,) if isinstance(taus, int | float) else tuple(taus)
    res = _fscores_from(nearest_distances(pred, gt), nearest_distances(gt, pred), taus)
    return {t: v["fscore"] for t, v in res.items()}


def tau_key(tau: float) -> str:
    """Column name of a threshold: ``fscore@0.2``."""
    return f"fscore@{float(tau):g}"


def geometry_metrics(pred, gt, taus: Sequence[float] = DEFAULT_TAUS, frame: str = "gt",
                     squared: bool = False) -> dict[str, Any]:
    """Chamfer and F-scores of ``pred`` against ``gt`` in one pass of nearest neighbours.

    Args:
        pred: ``[N, 3]`` predicted points; gt: ``[M, 3]`` ground-truth points.
        taus: F-score thresholds (frame units).
        frame: which frame both sets are in, as the CALLER states it: ``"gt"`` (the
            dataset's ground-truth frame) or ``"normalized"`` (the object frame).
        squared: squared-distance Chamfer instead of plain distances.

    Returns:
        ``{"chamfer", "fscore@<tau>", "precision@<tau>", "recall@<tau>", ...,
        "chamfer_form" ("l1-euclidean" or "l2-squared"), "frame", "num_pred", "num_gt"}``.
    """
    if frame not in ("gt", "normalized"):
        raise ValueError(f"geometry_metrics: frame must be 'gt' or 'normalized', got {frame!r}")
    p = as_points(pred, "pred")
    g = as_points(gt, "gt")
    d_pg, d_gp = nearest_distances(p, g), nearest_distances(g, p)
    out: dict[str, Any] = {"chamfer": _chamfer_from(d_pg, d_gp, squared)}
    for tau, v in _fscores_from(d_pg, d_gp, taus).items():
        key = tau_key(tau)
        out[key] = v["fscore"]
        out[key.replace("fscore", "precision")] = v["precision"]
        out[key.replace("fscore", "recall")] = v["recall"]
    out.update(chamfer_form="l2-squared" if squared else "l1-euclidean", frame=frame,
               num_pred=len(p), num_gt=len(g))
    return out


# --------------------------------------------------------------------------- prediction points
@dataclass
class DepthViews:
    """Rendered depth maps to back-project (see :func:`depth_to_points`).

    Attributes:
        depth: ``[V, H, W]`` (or ``[V, 1, H, W]``) z-depth along the camera's forward
            axis, world units; 0 or non-finite = no surface.
        c2w_opencv: ``[V, 4, 4]`` camera-to-world, OpenCV axes (right, down, forward).
        intrinsics: ``[V, 3, 3]`` normalised K (fx/W, fy/H, cx/W, cy/H), pixel centres at +0.5.
        alpha: optional ``[V, H, W]`` (or ``[V, 1, H, W]``) coverage in [0, 1].
        alpha_threshold: pixels with alpha <= this are dropped.
    """

    depth: Any
    c2w_opencv: Any
    intrinsics: Any
    alpha: Any = None
    alpha_threshold: float = 0.5


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def depth_to_points(depth, c2w_opencv, intrinsics, alpha=None, alpha_threshold: float = 0.5) -> np.ndarray:
    """Back-project z-depth maps to world points ``[P, 3]`` (valid pixels of all views).

    Pixel ``(i, j)`` (row, column) has normalised coordinates ``u = (j + 0.5) / W``,
    ``v = (i + 0.5) / H``; camera point ``((u - cx) / fx * z, (v - cy) / fy * z, z)``
    in OpenCV axes, mapped to world by ``c2w_opencv``. The rasterizer's depth layer is
    alpha-weighted (``sum w_i z_i``): divide it by alpha first to get the surface z.
    """
    d = _np(depth)
    if d.ndim == 4 and d.shape[1] == 1:
        d = d[:, 0]
    if d.ndim != 3:
        raise ValueError(f"depth: expected [V, H, W] z-depth maps, got shape {d.shape}")
    V, H, W = d.shape
    c2w, K = _np(c2w_opencv), _np(intrinsics)
    if c2w.shape != (V, 4, 4) or K.shape != (V, 3, 3):
        raise ValueError(f"depth_to_points: c2w {c2w.shape} / intrinsics {K.shape} do not match "
                         f"{V} depth maps (expected ({V}, 4, 4) / ({V}, 3, 3))")
    valid = np.isfinite(d) & (d > 0)
    if alpha is not None:
        a = _np(alpha)
        if a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        if a.shape != d.shape:
            raise ValueError(f"depth_to_points: alpha {a.shape} does not match depth {d.shape}")
        valid &= a > alpha_threshold
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    out = []
    for k in range(V):
        z = d[k]
        x = (u[None, :] - K[k, 0, 2]) / K[k, 0, 0] * z
        y = (v[:, None] - K[k, 1, 2]) / K[k, 1, 1] * z
        cam = np.stack([x, y, z], axis=-1)[valid[k]]  # [P_k, 3]
        out.append(cam @ c2w[k, :3, :3].T + c2w[k, :3, 3])
    pts = np.concatenate(out, axis=0) if out else np.zeros((0, 3))
    if len(pts) == 0:
        raise ValueError("depth_to_points: no valid depth pixel (all 0, NaN or masked out)")
    return pts


def gaussian_points(gaussians, opacity_threshold: float = DEFAULT_OPACITY_THRESHOLD
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``[P, 3]`` and opacities ``[P]`` of the Gaussians with opacity > threshold.

    ``gaussians``: a ``geolrm_bench.model.gaussians.Gaussians`` with fields ``[N]`` or ``[1, N]``.
    """
    means, opac = _np(gaussians.means), _np(gaussians.opacities)
    if means.ndim == 3:
        if means.shape[0] != 1:
            raise ValueError(f"prediction_points: batched Gaussians {means.shape}: pass one object (g[i])")
        means, opac = means[0], opac[0]
    keep = opac > opacity_threshold
    if not keep.any():
        raise ValueError(f"prediction_points: no Gaussian has opacity > {opacity_threshold} "
                         f"(of {len(opac)}; max opacity {opac.max() if len(opac) else 'n/a'})")
    return as_points(means[keep], "Gaussian centres"), opac[keep]


def prediction_points(source, method: str = "gaussians", n: int | None = DEFAULT_NUM_POINTS,
                      seed: int | None = 0, opacity_threshold: float = DEFAULT_OPACITY_THRESHOLD,
                      weighted: bool = False) -> np.ndarray:
    """Points ``[<=n, 3]`` that stand for a prediction's surface.

    Methods:
        ``"gaussians"`` (default): centres of the Gaussians (``geolrm_bench.model.gaussians.Gaussians``)
            with opacity > ``opacity_threshold`` (default 0.05). When more than ``n``
            remain, ``n`` are taken uniformly without replacement; with
            ``weighted=True`` exactly ``n`` are drawn with replacement with probability
            proportional to opacity.
        ``"mesh"``: ``n`` points sampled uniformly on the mesh surface
            (:func:`sample_surface_points`).
        ``"depth"``: rendered depth maps back-projected (``DepthViews`` or a dict with
            its fields, or an object with ``depths``/``c2w_opencv``/``intrinsics``/
            ``masks`` such as ``ViewBatch``), then at most ``n`` uniformly.

    ``n=None`` keeps every point (not for ``"mesh"``). Deterministic under ``seed``.
    """
    if method == "gaussians":
        pts, opac = gaussian_points(source, opacity_threshold)
        return _subsample(pts, n, seed, opac if weighted else None)
    if method == "mesh":
        if n is None:
            raise ValueError("prediction_points: method 'mesh' needs a number of points n")
        return sample_surface_points(source, n=n, seed=seed)
    if method == "depth":
        if isinstance(source, dict):
            source = DepthViews(**source)
        if not isinstance(source, DepthViews) and hasattr(source, "depths"):
            source = DepthViews(source.depths, source.c2w_opencv, source.intrinsics,
                                getattr(source, "masks", None))
        if not isinstance(source, DepthViews):
            raise ValueError("prediction_points: method 'depth' needs DepthViews, "
                             f"got {type(source).__name__}")
        pts = depth_to_points(source.depth, source.c2w_opencv, source.intrinsics, source.alpha,
                              source.alpha_threshold)
        return _subsample(pts, n, seed)
    raise ValueError(f"prediction_points: unknown method {method!r} (use 'gaussians', 'mesh' or 'depth')")
