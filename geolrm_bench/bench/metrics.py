"""Benchmark of the metrics on the CPU: per 512 x 512 view, and Chamfer + F-score at 16k x 16k.

Each fast path is timed beside an independent baseline measured in the same run:
PSNR vs ``skimage.metrics.peak_signal_noise_ratio``, SSIM vs scikit-image's
``structural_similarity`` (Gaussian window, same convention), Chamfer + F-score
(cKDTree) vs open3d's KD-tree distances and, at 4k x 4k, the brute-force float64
nearest-neighbour reference, LPIPS vs upstream's ``lpips.LPIPS`` forward (plain NCHW, direct
convolutions, the same weights); LPIPS is timed per view in a batch of 4.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import torch

RES = 512
VIEWS = 4
NUM_POINTS = 16000


def _time(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from skimage import data
    from skimage.transform import resize

    img = resize(data.astronaut(), (RES, RES), anti_aliasing=True).astype(np.float32)  # [H, W, 3] in [0,1]
    rng = np.random.default_rng(seed)
    gt = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(VIEWS, 1, 1, 1).contiguous()
    noise = torch.from_numpy(rng.normal(0, 0.05, gt.shape).astype(np.float32))
    return (gt + noise).clamp(0, 1), gt


def rows() -> list[list]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from geolrm_bench._reference import nearest_distances as nearest_distances_reference
    from geolrm_bench.metrics import LPIPS, geometry_metrics, psnr, ssim
    from geolrm_bench.metrics.geometry import _chamfer_from, _fscores_from
    from geolrm_bench.metrics.lpips import build_lpips_network

    pred, gt = _images()
    p_np = pred.permute(0, 2, 3, 1).double().numpy()
    g_np = gt.permute(0, 2, 3, 1).double().numpy()
    out = []

    t = _time(lambda: psnr(pred, gt)) / VIEWS
    tb = _time(lambda: [peak_signal_noise_ratio(g_np[i], p_np[i], data_range=1.0)
                        for i in range(VIEWS)]) / VIEWS
    out.append(["PSNR", f"{RES}x{RES} view", t * 1e3, "skimage psnr", tb * 1e3, tb / t])

    t = _time(lambda: ssim(pred, gt)) / VIEWS
    tb = _time(lambda: [structural_similarity(g_np[i], p_np[i], gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=1.0, channel_axis=2)
                        for i in range(VIEWS)], repeat=1) / VIEWS
    out.append(["SSIM", f"{RES}x{RES} view", t * 1e3, "skimage ssim", tb * 1e3, tb / t])

    for net in ("vgg", "alex"):
        metric = LPIPS(net, chunk_size=VIEWS)
        t = _time(lambda m=metric: m(pred, gt), repeat=1) / VIEWS
        upstream = build_lpips_network(net)

        def plain(u=upstream):
            with torch.no_grad():
                return u(pred * 2 - 1, gt * 2 - 1)

        tb = _time(plain, repeat=1) / VIEWS
        out.append([f"LPIPS-{net}", f"{RES}x{RES} view (batch {VIEWS})", t * 1e3, "upstream lpips forward",
                    tb * 1e3, tb / t])
        del metric, upstream

    rng = np.random.default_rng(0)
    a = rng.normal(size=(NUM_POINTS, 3))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = a + rng.normal(0, 0.01, a.shape)
    t = _time(lambda: geometry_metrics(a, b, taus=(0.2,)), repeat=5)
    try:
        import open3d as o3d

        pa = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(a))
        pb = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(b))

        def o3d_metrics():
            d1 = np.asarray(pa.compute_point_cloud_distance(pb))
            d2 = np.asarray(pb.compute_point_cloud_distance(pa))
            return _chamfer_from(d1, d2, False), _fscores_from(d1, d2, (0.2,))

        tb = _time(o3d_metrics, repeat=5)
        out.append(["Chamfer + F-score@0.2", f"{NUM_POINTS // 1000}k x {NUM_POINTS // 1000}k points",
                    t * 1e3, "open3d KD-tree", tb * 1e3, tb / t])
    except ImportError:
        out.append(["Chamfer + F-score@0.2", f"{NUM_POINTS // 1000}k x {NUM_POINTS // 1000}k points",
                    t * 1e3, "(open3d absent)", float("nan"), float("nan")])

    small_a, small_b = a[:4000], b[:4000]  # brute force at 16k x 16k takes tens of seconds
    t = _time(lambda: geometry_metrics(small_a, small_b, taus=(0.2,)), repeat=5)

    def brute():
        d1 = nearest_distances_reference(small_a, small_b)
        d2 = nearest_distances_reference(small_b, small_a)
        return _chamfer_from(d1, d2, False), _fscores_from(d1, d2, (0.2,))

    tb = _time(brute, repeat=1, warmup=0)
    out.append(["Chamfer + F-score@0.2", "4k x 4k points", t * 1e3, "brute force f64", tb * 1e3, tb / t])
    return out


def main() -> None:
    from tabulate import tabulate

    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(tabulate(rows(), headers=["metric", "size", "ours ms", "baseline", "baseline ms", "speed-up"],
                   floatfmt=".1f"))


if __name__ == "__main__":
    main()
