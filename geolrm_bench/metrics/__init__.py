"""Evaluation metrics: PSNR, SSIM, LPIPS, Chamfer, F-score, surface sampling, cost.

Images are ``[B, C, H, W]`` in [0, 1]; point sets ``[N, 3]`` in one world frame.
The LPIPS network (``lpips`` / torchvision) and scipy load lazily, on first use.
"""

from geolrm_bench.metrics.cost import CostResult, measure_cost
from geolrm_bench.metrics.geometry import (
    DEFAULT_NUM_POINTS,
    DEFAULT_OPACITY_THRESHOLD,
    DEFAULT_TAUS,
    DepthViews,
    chamfer_distance,
    depth_to_points,
    fscore,
    geometry_metrics,
    nearest_distances,
    prediction_points,
    sample_surface_points,
    tau_key,
)
from geolrm_bench.metrics.image import PSNR, SSIM, psnr, psnr_compute, psnr_update, ssim
from geolrm_bench.metrics.lpips import LPIPS, lpips

__all__ = [
    "PSNR", "SSIM", "psnr", "psnr_update", "psnr_compute", "ssim", "LPIPS", "lpips",
    "sample_surface_points", "chamfer_distance", "fscore", "geometry_metrics", "nearest_distances",
    "prediction_points", "depth_to_points", "DepthViews", "tau_key", "DEFAULT_NUM_POINTS",
    "DEFAULT_TAUS", "DEFAULT_OPACITY_THRESHOLD", "measure_cost", "CostResult",
]
