"""Image metrics: PSNR and SSIM on batched ``[B, C, H, W]`` images in [0, 1].

Conventions (see docs/ARCHITECTURE.md): images are float tensors (or numpy arrays)
in [0, 1], channels first; B = views. Every function returns one value per view
(``[B]``, float64); the ``PSNR`` / ``SSIM`` classes accumulate over batches in the
torchmetrics ``update`` + ``compute`` style so that aggregation is exact.

PSNR = ``10 log10(1 / MSE)`` with data range 1 (the GeoLRM test step). SSIM uses a
Gaussian window of size 11 and sigma 1.5, data range 1, K1 = 0.01, K2 = 0.03 and
population (not sample) covariances, averaged over the channels and over the
"valid" region (5-pixel border dropped) -- the convention of torchmetrics and of
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=...)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geolrm_bench.metrics.base import ViewMeanMetric

# SSIM constants (Wang et al. 2004; torchmetrics / scikit-image defaults).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_RANGE_TOL = 1e-6  # tolerance on the [0, 1] range check (float rounding of stored images)


def _to_tensor(x, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise ValueError(f"{name} must be a floating-point image in [0, 1], got dtype {x.dtype}")
    return x


def _check_range(x: Tensor, name: str) -> None:
    lo, hi = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates into both
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name} contains NaN values")
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")


def check_image_pair(pred, target, name: str = "images") -> tuple[Tensor, Tensor]:
    """Validate two ``[B, C, H, W]`` images in [0, 1] of equal shape; return tensors.

    Raises:
        ValueError: naming the shapes or the value range when they are invalid.
    """
    pred = _to_tensor(pred, f"{name}: pred")
    target = _to_tensor(target, f"{name}: target")
    if pred.dim() != 4 or target.dim() != 4:
        raise ValueError(f"{name}: expected [B, C, H, W] images, got pred {tuple(pred.shape)} "
                         f"and target {tuple(target.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.numel() == 0:
        raise ValueError(f"{name}: empty images {tuple(pred.shape)}")
    _check_range(pred, f"{name}: pred")
    _check_range(target, f"{name}: target")
    return pred, target.to(device=pred.device)


# ----------------------------------------------------------------------------- PSNR
def psnr_update(pred, target, mask=None) -> tuple[Tensor, Tensor]:
    """Sufficient statistics of PSNR for one batch.

    Args:
        pred: ``[B, C, H, W]`` in [0, 1].
        target: ``[B, C, H, W]`` in [0, 1].
        mask: optional ``[B, 1, H, W]`` (bool, or float weights in [0, 1]); the squared
            error is averaged over masked pixels (and all channels) only.

    Returns:
        ``(sum_squared_error [B], num_observations [B])`` in float64.
    """
    pred, target = check_image_pair(pred, target, "psnr")
    diff = pred - target if pred.dtype == torch.float64 else pred.float() - target.float()
    # [B, C, H, W]; torch's CPU sum is a cascade (pairwise) sum: ~1e-7 relative in float32
    err = diff.square()
    if mask is None:
        return err.flatten(1).sum(1).double(), torch.full(
            (pred.shape[0],), float(err[0].numel()), dtype=torch.float64, device=err.device)
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, Tensor):
        raise ValueError(f"psnr: mask must be a torch.Tensor or numpy array, got {type(mask).__name__}")
    mask = mask.to(torch.float64)
    B, C, H, W = pred.shape
    if tuple(mask.shape) != (B, 1, H, W):
        raise ValueError(f"psnr: mask must have shape {(B, 1, H, W)}, got {tuple(mask.shape)}")
    _check_range(mask, "psnr: mask")
    m = mask.to(err.device)
    sse = (err * m.to(err.dtype)).flatten(1).sum(1).double()
    n = m.flatten(1).sum(1) * C
    if bool((n <= 0).any()):
        bad = torch.nonzero(n <= 0).flatten().tolist()
        raise ValueError(f"psnr: mask selects no pixels in view(s) {bad}")
    return sse, n


def psnr_compute(sum_squared_error: Tensor, num_observations: Tensor) -> Tensor:
    """``10 log10(1 / MSE)`` per entry, data range 1 (``inf`` where MSE is 0)."""
    mse = sum_squared_error / num_observations
    return 10.0 * torch.log10(1.0 / mse)


def psnr(pred, target, mask=None) -> Tensor:
    """PSNR in dB of each view, ``10 log10(1 / MSE)`` on images in [0, 1].

    Args:
        pred, target: ``[B, C, H, W]`` in [0, 1] (torch or numpy).
        mask: optional ``[B, 1, H, W]``; MSE over masked pixels only.

    Returns:
        ``[B]`` float64 PSNR per view (``inf`` for identical views).
    """
    return psnr_compute(*psnr_update(pred, target, mask))


class PSNR(ViewMeanMetric):
    """Accumulating PSNR: ``update(pred, target, mask=None)`` per batch, then ``compute()``.

    ``reduction="mean"`` (default) averages the per-view PSNR (how papers report it);
    ``reduction="global"`` takes PSNR of the MSE pooled over every pixel seen
    (torchmetrics' default). Views with zero error (infinite PSNR) are kept, so the
    mean becomes ``inf``: the caller should notice identical images.
    """

    def __init__(self, reduction: str = "mean"):
        if reduction not in ("mean", "global"):
            raise ValueError(f"PSNR reduction must be 'mean' or 'global', got {reduction!r}")
        self.reduction = reduction
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.sum_squared_error = 0.0
        self.num_observations = 0.0

    def values(self, pred, target, mask=None) -> Tensor:
        """Per-view PSNR ``[B]`` (:func:`psnr`)."""
        return psnr(pred, target, mask)

    def update(self, pred, target, mask=None) -> Tensor:
        """Add a batch; returns its per-view PSNR ``[B]`` and pools its squared error (``global``)."""
        sse, n = psnr_update(pred, target, mask)
        self.sum_squared_error += float(sse.sum())
        self.num_observations += float(n.sum())
        return self._accumulate(psnr_compute(sse, n))

    def compute(self) -> float:
        if self.reduction == "mean" or self.num_views == 0:
            return super().compute()
        mse = self.sum_squared_error / self.num_observations
        return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


# ----------------------------------------------------------------------------- SSIM
def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
                       dtype: torch.dtype = torch.float64) -> Tensor:
    """Normalised 1-D Gaussian ``[size]`` centred on the middle tap (as scipy.ndimage)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def _ssim_from_moments(mu_x, mu_y, e_xx, e_yy, e_xy, data_range: float = 1.0) -> Tensor:
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    vx = e_xx - mu_x * mu_x
    vy = e_yy - mu_y * mu_y
    vxy = e_xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * vxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (vx + vy + c2)
    return num / den


def _check_ssim_size(shape) -> None:
    if shape[-1] < SSIM_WINDOW or shape[-2] < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(shape)}")


def ssim(pred, target, dtype: torch.dtype = torch.float32, chunk_size: int = 8) -> Tensor:
    """Mean SSIM of each view (Gaussian window 11, sigma 1.5, data range 1, K1 0.01, K2 0.03).

    Matches torchmetrics ``structural_similarity_index_measure`` defaults and
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=0)``: the local moments
    are Gaussian-weighted means, and the SSIM map is averaged over the pixels whose
    window lies fully inside the image (a 5-pixel border is dropped, so no padding
    mode enters the result), then over channels.

    Args:
        pred, target: ``[B, C, H, W]`` in [0, 1], H and W >= 11.
        dtype: compute precision (float32 is within ~1e-6 of float64 on [0, 1] data).
        chunk_size: views per convolution (bounds memory: ~40 MB per 512 x 512 RGB view).

    Returns:
        ``[B]`` float64 SSIM per view (1 for identical views).
    """
    pred, target = check_image_pair(pred, target, "ssim")
    _check_ssim_size(pred.shape)
    step = max(1, int(chunk_size))
    return torch.cat([_ssim_batch(pred[i:i + step], target[i:i + step], dtype)
                      for i in range(0, pred.shape[0], step)])


def _ssim_batch(pred: Tensor, target: Tensor, dtype: torch.dtype) -> Tensor:  # [B,C,H,W] x2 -> [B]
    B, C, H, W = pred.shape
    x = pred.to(dtype).reshape(1, B * C, H, W)
    y = target.to(dtype).reshape(1, B * C, H, W)
    g = gaussian_window_1d()
    n = 5 * B * C
    w2 = (g[:, None] * g[None, :]).to(dtype=dtype, device=x.device).expand(n, 1, SSIM_WINDOW, SSIM_WINDOW)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [1, 5*B*C, H, W]
    # One depthwise ("valid") 11x11 convolution: each output sees only in-image pixels.
    # On the CPU this is several times faster than two separable 1-D passes.
    filt = F.conv2d(stack, w2.contiguous(), groups=n)  # [1, 5*B*C, H-10, W-10]
    mu_x, mu_y, e_xx, e_yy, e_xy = filt.chunk(5, dim=1)
    smap = _ssim_from_moments(mu_x, mu_y, e_xx, e_yy, e_xy)  # [1, B*C, H-10, W-10]
    return smap.reshape(B, C, -1).double().mean(dim=(1, 2))


class SSIM(ViewMeanMetric):
    """Accumulating SSIM: ``update(pred, target)`` per batch, ``compute()`` = mean over views."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        super().__init__()

    def values(self, pred, target) -> Tensor:
        """Per-view SSIM ``[B]`` (:func:`ssim`)."""
        return ssim(pred, target, dtype=self.dtype)
