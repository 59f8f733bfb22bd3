"""Benchmark section ``model``: GeoLRM forward cost vs input views (paper Table 3) and the CPU rasterizer.

1. ``paper`` preset (random weights, paper maths, fp32) forward pass = proposal + token selection
   + reconstruction + Gaussian decoding, for 4, 8, 12, 16, 20 input views of 512 x 512 images
   (resized inside the model to its 448 px input), token cap fixed at 8192 (the official inference
   default; random weights occupy far more than 8192 voxels, so every run uses exactly 8192 tokens
   = 262,144 Gaussians). Time and peak memory from :func:`geolrm_bench.metrics.cost.measure_cost`
   (CPU: peak process RSS, including the ~1.3 GB of weights; CUDA: max allocated). One warm-up
   pass per setting is not taken on the CPU (too slow); on CUDA one warm-up precedes the timing.
   ``GEOLRM_BENCH_QUICK=1`` runs only 4 views on the CPU (the full sweep takes many minutes on
   2 cores). The paper's numbers (A100, official code) are printed beside ours.
2. CPU rasterizer: 64k Gaussians at 512 x 512 (forward, and forward + backward), 262k (GeoLRM's
   output at the token cap) forward, and, for scale,
   the tile-free reference against the fast paths on a small case.
"""

from __future__ import annotations

import os
import time

import torch
from tabulate import tabulate

from geolrm_bench.model.gaussians import shell_gaussians

PAPER_TABLE3 = {4: (0.51, 4.30), 8: (0.84, 5.50), 12: (1.16, 6.96), 16: (1.51, 8.23), 20: (1.84, 9.43)}
VIEWS = (4, 8, 12, 16, 20)
TOKEN_CAP = 8192
IMAGE_SIZE = 512


def _quick() -> bool:
    return os.environ.get("GEOLRM_BENCH_QUICK", "") not in ("", "0")


def _inputs(num_views: int, device: str, size: int = IMAGE_SIZE):
    """Random images on GObjaverse orbit cameras: ``[1, V, 3, S, S]``, OpenGL c2w, normalised K."""
    from geolrm_bench.cameras import gobjaverse_c2w, intrinsics_from_fov
    from geolrm_bench.protocol import input_view_ids

    ids = input_view_ids(num_views)
    c2w = torch.as_tensor(gobjaverse_c2w(ids, convention="opengl"), dtype=torch.float32)
    import math

    K = torch.as_tensor(intrinsics_from_fov(math.radians(39.6), math.radians(39.6)), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, num_views, 3, size, size, generator=gen)
    return (images.to(device), c2w[None].to(device),
            K[None, None].expand(1, num_views, 3, 3).contiguous().to(device))


def model_forward_table(device: str, views=VIEWS, preset: str = "paper", warmup: bool = False) -> list[list]:
    from geolrm_bench.metrics.cost import measure_cost
    from geolrm_bench.model.config import get_config
    from geolrm_bench.model.geolrm import GeoLRM

    torch.manual_seed(0)
    model = GeoLRM(get_config(preset)).to(device).eval()
    rows = []
    for v in views:
        images, c2w, K = _inputs(v, device)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            if warmup:
                model.reconstruct(images, c2w, K, max_tokens=TOKEN_CAP, generator=gen)
            with measure_cost(device=device) as cost:
                g = model.reconstruct(images, c2w, K, max_tokens=TOKEN_CAP,
                                      generator=torch.Generator().manual_seed(0))
        paper_s, paper_gb = PAPER_TABLE3.get(v, (float("nan"), float("nan")))
        rows.append([v, g.means.shape[-2], f"{cost.seconds:.2f}", f"{cost.peak_memory_gb:.2f}",
                     cost.memory_method, paper_s, paper_gb])
        print(f"  {device} {v} views: {cost.seconds:.2f} s, {cost.peak_memory_gb:.2f} GB", flush=True)
        del g
    return rows


def _camera(size: int):
    from geolrm_bench.cameras import gobjaverse_c2w

    c2w = torch.as_tensor(gobjaverse_c2w([0], convention="opengl"), dtype=torch.float32)
    K = torch.tensor([[[1.3889, 0.0, 0.5], [0.0, 1.3889, 0.5], [0.0, 0.0, 1.0]]])
    return c2w, K


def _time(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def rasterizer_table() -> list[list]:
    from geolrm_bench.model.rasterize import render_gaussians

    rows = []
    c2w, K = _camera(512)
    g = shell_gaussians(65536)
    for method in ("tiles", "auto"):
        def fwd(method=method):
            with torch.no_grad():
                render_gaussians(g, c2w, K, 512, 512, method=method)
        rows.append([f"torch {method}", "65,536", "512x512", "forward", f"{_time(fwd, 2):.2f}"])
    big = shell_gaussians(TOKEN_CAP * 32, seed=2)  # as many as GeoLRM outputs at the 8192-token cap

    def fwd_big():
        with torch.no_grad():
            render_gaussians(big, c2w, K, 512, 512)
    rows.append(["torch auto", f"{TOKEN_CAP * 32:,}", "512x512", "forward", f"{_time(fwd_big):.2f}"])
    params = [t.clone().requires_grad_(True) for t in (g.means, g.opacities, g.scales, g.quats, g.colors)]

    def fwd_bwd():
        from geolrm_bench.model.gaussians import Gaussians

        gg = Gaussians(*params)
        out = render_gaussians(gg, c2w, K, 512, 512)
        (out["rgb"].mean() + out["depth"].mean()).backward()
    rows.append(["torch auto", "65,536", "512x512", "forward+backward", f"{_time(fwd_bwd):.2f}"])

    small = shell_gaussians(2000, seed=1, scale=(0.01, 0.04))
    for backend, method in (("reference", "auto"), ("torch", "tiles"), ("torch", "pairs")):
        def f(backend=backend, method=method):
            with torch.no_grad():
                render_gaussians(small, c2w, K, 96, 96, backend=backend, method=method)
        rows.append([f"{backend} {method if backend == 'torch' else ''}".strip(), "2,000", "96x96", "forward",
                     f"{_time(f, 3):.3f}"])
    return rows


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"paper preset, random weights, token cap {TOKEN_CAP}, {IMAGE_SIZE} px inputs (model input 448)")
    headers = ["views", "Gaussians", "time s", "peak GB", "memory", "paper s (A100)", "paper GB"]
    cpu_views = (4,) if _quick() else VIEWS
    if _quick():
        print("GEOLRM_BENCH_QUICK=1: CPU sweep reduced to 4 input views")
    print("\nCPU forward (no warm-up):")
    print(tabulate(model_forward_table("cpu", cpu_views), headers=headers, tablefmt="github"))
    if torch.cuda.is_available():
        print(f"\nCUDA forward ({torch.cuda.get_device_name()}, one warm-up pass):")
        print(tabulate(model_forward_table("cuda", VIEWS, warmup=True), headers=headers, tablefmt="github"))
    else:
        print("\nCUDA: not available here (paper: 0.51 s / 4.30 GB at 4 views .. 1.84 s / 9.43 GB at 20)")
    print("\nCPU rasterizer (best of runs):")
    print(tabulate(rasterizer_table(), headers=["backend", "Gaussians", "size", "pass", "time s"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
