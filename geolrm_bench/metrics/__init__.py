"""Evaluation metrics: PSNR, SSIM, LPIPS, Chamfer, F-score, surface sampling, cost.

Images are ``[B, C, H, W]`` in [0, 1]; point sets ``[N, 3]`` in one world frame.
LPIPS and the geometry helpers import their heavy dependencies lazily.
"""

from geolrm_bench.metrics.image import PSNR, SSIM, psnr, psnr_compute, psnr_update, ssim
from geolrm_bench.metrics.lpips import LPIPS, lpips

__all__ = ["PSNR", "SSIM", "psnr", "psnr_update", "psnr_compute", "ssim", "LPIPS", "lpips"]
