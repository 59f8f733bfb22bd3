"""PSNR and SSIM against hand-computed values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity

from geolrm_bench import _reference
from geolrm_bench.metrics import LPIPS, PSNR, SSIM, psnr, ssim
from geolrm_bench.metrics.base import ViewMeanMetric


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image SSIM of one [C, H, W] pair with the torchmetrics convention."""
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=1.0, channel_axis=0))


# ----------------------------------------------------------------------------- PSNR
def test_psnr_constant_offset_by_hand():
    target = torch.full((2, 3, 8, 8), 0.5)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1] -= 0.01  # MSE 1e-4 -> 40 dB
    np.testing.assert_allclose(psnr(pred, target).numpy(), [20.0, 40.0], atol=1e-5)


def test_psnr_mask_counts_only_masked_pixels():
    target = torch.zeros(1, 3, 4, 4)
    pred = torch.zeros(1, 3, 4, 4)
    pred[..., :2, :] = 0.1  # error 0.1 on the top half
    pred[..., 2:, :] = 0.5  # error 0.5 on the bottom half
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True
    assert float(psnr(pred, target, mask)) == pytest.approx(20.0, abs=1e-6)
    full_mse = (0.01 + 0.25) / 2
    assert float(psnr(pred, target)) == pytest.approx(10 * math.log10(1 / full_mse), abs=1e-6)


def test_psnr_accumulates_mean_and_global():
    target = torch.full((3, 1, 5, 5), 0.5)
    offsets = [0.1, 0.01, 0.001]
    pred = torch.stack([target[i] + o for i, o in enumerate(offsets)])
    m = PSNR()
    m.update(pred[:2], target[:2])
    m.update(pred[2:], target[2:])
    assert m.compute() == pytest.approx((20 + 40 + 60) / 3, abs=1e-3)
    g = PSNR(reduction="global")
    g.update(pred[:1], target[:1])
    g.update(pred[1:], target[1:])
    mse = sum(o * o for o in offsets) / 3
    assert g.compute() == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)


def test_psnr_identical_is_inf():
    x = torch.rand(1, 3, 4, 4)
    assert math.isinf(float(psnr(x, x)))


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), r"\[B, C, H, W\]"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5), "differ in shape"),
        (torch.full((1, 3, 4, 4), 1.5), torch.zeros(1, 3, 4, 4), r"\[0, 1\]"),
        (torch.full((1, 3, 4, 4), float("nan")), torch.zeros(1, 3, 4, 4), "NaN"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, 3, 4, 4), "floating"),
    ],
)
def test_invalid_inputs_raise(pred, target, match):
    with pytest.raises(ValueError, match=match):
        psnr(pred, target)


def test_psnr_bad_mask():
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="mask must have shape"):
        psnr(x, x, torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="no pixels"):
        psnr(x, x, torch.zeros(1, 1, 4, 4))


# ----------------------------------------------------------------------------- SSIM
def test_ssim_matches_skimage_random():
    rng = np.random.default_rng(1)
    a = rng.random((3, 3, 37, 53))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    b[2] = rng.random(b[2].shape)  # an unrelated pair too
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = [_sk_ssim(a[i], b[i]) for i in range(3)]
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_ssim_matches_skimage_astronaut():
    img = data.astronaut()[::2, ::2].astype(np.float64) / 255  # 256 x 256 natural image
    rng = np.random.default_rng(2)
    noisy = np.clip(img + rng.normal(0, 0.08, img.shape), 0, 1)
    blurred = np.clip(0.5 * img + 0.5 * np.roll(img, 3, axis=1), 0, 1)
    a = np.stack([img, img]).transpose(0, 3, 1, 2)
    b = np.stack([noisy, blurred]).transpose(0, 3, 1, 2)
    ours = ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float()).numpy()
    ref = [_sk_ssim(a[i], b[i]) for i in range(2)]
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_ssim_fast_path_matches_reference_and_numpy_input():
    rng = np.random.default_rng(3)
    a, b = rng.random((5, 2, 20, 31)), rng.random((5, 2, 20, 31))
    ref = _reference.ssim(a, b).numpy()
    np.testing.assert_allclose(ssim(a, b, dtype=torch.float64).numpy(), ref, atol=1e-10)
    np.testing.assert_allclose(ssim(a, b).numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(ssim(a, b, chunk_size=2).numpy(), ref, atol=1e-5)  # chunked batches


def test_ssim_identical_is_one_and_accumulates():
    x = torch.rand(2, 3, 16, 16)
    np.testing.assert_allclose(ssim(x, x).numpy(), [1.0, 1.0], atol=1e-6)
    y = (x + 0.1 * torch.rand_like(x)).clamp(0, 1)
    m = SSIM()
    v1 = m.update(x[:1], y[:1])
    v2 = m.update(x[1:], y[1:])
    assert m.compute() == pytest.approx(float(v1 + v2) / 2)


def test_ssim_too_small():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 10, 30), torch.zeros(1, 1, 10, 30))


def test_accumulators_share_one_base_and_refuse_empty_compute():
    """PSNR / SSIM (and LPIPS) are thin ViewMeanMetric wrappers over the functional form."""
    assert all(issubclass(c, ViewMeanMetric) for c in (PSNR, SSIM, LPIPS))
    for m in (PSNR(), PSNR("global"), SSIM()):
        with pytest.raises(ValueError, match="before any update"):
            m.compute()
    a = torch.full((2, 3, 12, 12), 0.5)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB; view 1 is identical (inf)
    m = PSNR()
    torch.testing.assert_close(m.values(a, b)[:1], torch.tensor([20.0], dtype=torch.float64))
    assert m.num_views == 0  # values() is pure: nothing accumulated
    m.update(a[:1], b[:1])
    m.reset()
    m.update(a[:1], b[:1])
    assert m.num_views == 1 and m.compute() == pytest.approx(20.0, abs=1e-4)
