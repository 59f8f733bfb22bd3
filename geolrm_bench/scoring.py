"""Scoring of one object: image metrics per test view, geometry in three frames, the record.

- :func:`image_scores`: PSNR / SSIM per test view (:mod:`geolrm_bench.metrics`).
- :func:`geometry_scores`: Chamfer / F-score headline (``chamfer`` / ``fscore``) with the
  object scaled to [-1, 1]^3 (the usual LRM evaluation frame), beside them the same in the
  ground-truth mesh's own frame in metres (``chamfer_m`` / ``fscore_m``: prediction points
  mapped back with the inverse of ``ObjectAsset.to_normalized`` and multiplied by
  ``ObjectAsset.unit_m``) and in the normalised frame, longest side 1 (``chamfer_unitbox`` /
  ``fscore_unitbox``).
- :class:`ObjectRecord`: the per-object result file ``<run>/objects/<name>.json`` (written by
  the evaluation's scoring stage; read back by :func:`geolrm_bench.reports.eval_tables`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

#: per-object geometry columns (see :func:`geometry_scores`), headline first
GEOMETRY_COLUMNS = ("chamfer", "fscore", "chamfer_m", "fscore_m", "chamfer_unitbox", "fscore_unitbox")
#: how the geometry columns are framed (part of the resume key: older records are redone)
GEOMETRY_FRAMES = "headline [-1,1]^3; _m metres; _unitbox longest side 1"
#: the headline geometry frame: the normalised object scaled to [-1, 1]^3 (longest side 2), the
#: usual LRM evaluation frame; the paper's Chamfer 0.167 / F-score@0.2 0.892 are read as in it
BOX2_SCALE = 2.0


def image_scores(images: np.ndarray, gt_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB) and SSIM per test view: ``[T, 3, H, W]`` x2 in [0, 1] -> ``([T], [T])`` float64,
    with :func:`geolrm_bench.metrics.psnr` / :func:`geolrm_bench.metrics.ssim`."""
    import torch  # heavy: only in the scoring worker

    from geolrm_bench.metrics import psnr, ssim  # (torch, as above)

    p = torch.from_numpy(np.ascontiguousarray(images)).float()
    g = torch.from_numpy(np.ascontiguousarray(gt_images)).float()
    ps = np.asarray(torch.as_tensor(psnr(p, g)).double().reshape(-1), dtype=np.float64)
    ss = np.asarray(torch.as_tensor(ssim(p, g)).double().reshape(-1), dtype=np.float64)
    return ps, ss


def geometry_scores(points: np.ndarray, gt_points: np.ndarray, to_normalized: np.ndarray,
                    unit_m: float = 1.0, tau: float = 0.2) -> dict[str, float]:
    """Chamfer and F-score@``tau`` of prediction points against ground-truth points, in three frames.

    Args:
        points: [M, 3] prediction points in the normalised object frame ([-0.5, 0.5]^3).
        gt_points: [N, 3] ground-truth surface points in the GT frame (the dataset file's axes,
            origin and units).
        to_normalized: [4, 4] GT frame -> normalised frame (``ObjectAsset.to_normalized``).
        unit_m: metres per GT-frame unit (``ObjectAsset.unit_m``: HOPE 0.01, Omni 0.001).
        tau: F-score threshold, the same number in every frame (its units: that frame's).

    Returns:
        ``chamfer`` / ``fscore`` (the headline, comparable with the paper): the object scaled
        to [-1, 1]^3 (normalised frame x :data:`BOX2_SCALE`, longest side 2; an assumption:
        the paper does not state its frame, this is the usual LRM evaluation frame);
        ``chamfer_m`` / ``fscore_m``: the GT frame in metres (predictions mapped back with the
        inverse of ``to_normalized``, both sets scaled by ``unit_m``; ``tau`` in metres);
        ``chamfer_unitbox`` / ``fscore_unitbox``: the normalised frame (longest side 1).
    """
    from geolrm_bench.datasets import points_to_gt_frame, points_to_normalized_frame  # trimesh: lazily
    from geolrm_bench.metrics import geometry_metrics, tau_key  # torch/scipy: lazily

    pred_norm = np.asarray(points, np.float64)
    gt_pts = np.asarray(gt_points, np.float64)
    gt_norm = points_to_normalized_frame(gt_pts, to_normalized)
    gm = geometry_metrics(points_to_gt_frame(pred_norm, to_normalized) * unit_m, gt_pts * unit_m,
                          taus=(tau,), frame="gt")
    gn = geometry_metrics(pred_norm, gt_norm, taus=(tau,), frame="normalized")
    gb = geometry_metrics(pred_norm * BOX2_SCALE, gt_norm * BOX2_SCALE, taus=(tau,), frame="normalized")
    k = tau_key(tau)
    return {"chamfer": float(gb["chamfer"]), "fscore": float(gb[k]),
            "chamfer_m": float(gm["chamfer"]), "fscore_m": float(gm[k]),
            "chamfer_unitbox": float(gn["chamfer"]), "fscore_unitbox": float(gn[k])}


@dataclass
class ObjectRecord:
    """One object's result, the JSON file ``<run>/objects/<name>.json``.

    Fields left ``None`` are not written (a failed object's record stops where it failed), so
    the file holds exactly the keys that were computed, in this order. Times in seconds,
    memory in GiB, geometry as :func:`geometry_scores`.
    """

    object: str
    status: str = "ok"  # ok | failed
    error: str = ""
    method: str | None = None
    dataset: str | None = None
    run_key: str | None = None
    num_input_views: int | None = None
    views: list[dict] = field(default_factory=list)  # {view, psnr, ssim, lpips} per test view
    render_s: float | None = None  # rendering the views used + sampling GT points (0 when cached)
    warnings: list[str] | None = None
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    chamfer: float | None = None
    fscore: float | None = None
    chamfer_m: float | None = None
    fscore_m: float | None = None
    chamfer_unitbox: float | None = None
    fscore_unitbox: float | None = None
    gt_unit_m: float | None = None  # metres per GT-frame unit of the ground-truth points
    inference_s: float | None = None  # the method's reconstruction alone
    memory_gb: float | None = None  # its peak memory
    num_gaussians: int | None = None
    device: str | None = None
    reconstruct_s: float | None = None  # loading views + reconstruction + test-view render
    memory_method: str | None = None
    lpips_s: float | None = None
    metrics_s: float | None = None  # PSNR / SSIM / geometry + LPIPS
    # stage breakdown (seconds): GT surface points (part of render_s), loading the views, test-view
    # rasterization (both part of reconstruct_s), PSNR+SSIM, geometry, the qualitative picture
    gt_points_s: float | None = None
    load_s: float | None = None
    raster_s: float | None = None
    image_metrics_s: float | None = None
    geometry_s: float | None = None
    picture_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as written: every field that is not None, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def fill_missing_geometry(self) -> None:
        """NaN in every geometry column (scored later when the method gave points)."""
        for k in GEOMETRY_COLUMNS:
            setattr(self, k, math.nan)
