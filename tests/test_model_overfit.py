"""The ``tiny`` GeoLRM overfits one object's 8 views: gradients flow through encoder, attention,
decoder and rasterizer.

The object is the coloured box (0.8 x 0.6 x 0.4) rendered by the project's pyrender renderer from
8 orbit views at 40 px (rendered at 80 px, 2 x 2 box-filtered); the same 8 views are inputs and
targets (white background). Anchors are
the box's surface voxels on the tiny model's 32^3 grid (1024 of them, the preset's token cap),
shifted by -offset_max / 2 per axis so that the decoder's positive-only offsets start centred on
the surface. Only the reconstruction network is trained (as stage 2 of the paper), with
MSE(rgb) + MSE(alpha).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from conftest import make_box_mesh

RES = 40
SUPERSAMPLE = 2  # render at 2x and average 2 x 2 blocks: antialiased edges, as real renders have
VIEWS = [0, 3, 6, 9, 12, 15, 18, 21]
TARGET_PSNR = 24.0




def _box_views():
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    from geolrm_bench.cameras import intrinsics_from_fov, opencv_to_opengl
    from geolrm_bench.rendering import render_views

    box = make_box_mesh()
    try:
        layers = render_views(box, resolution=RES * SUPERSAMPLE, views=VIEWS)
    except Exception as e:  # pragma: no cover - no OSMesa here
        pytest.skip(f"offscreen rendering unavailable: {type(e).__name__}: {e}")
    rgba = torch.from_numpy(layers["rgba"].astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # [V, 4, H, W]
    premult = torch.cat([rgba[:, :3] * rgba[:, 3:], rgba[:, 3:]], 1)
    premult = torch.nn.functional.avg_pool2d(premult, SUPERSAMPLE)  # [V, 4, RES, RES]
    alpha = premult[:, 3:]
    images = premult[:, :3] + (1 - alpha)  # on white
    c2w = opencv_to_opengl(torch.as_tensor(np.asarray(layers["c2w_opencv"]), dtype=torch.float32))
    fx, fy = layers["fov"]
    K = torch.as_tensor(intrinsics_from_fov(fx, fy), dtype=torch.float32).expand(len(VIEWS), 3, 3)
    return images, alpha, c2w, K


def _surface_anchors(res: int, n: int, shift: float) -> torch.Tensor:  # [1, n, 3]
    c = (np.arange(res) + 0.5) / res - 0.5
    P = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    half, vs = np.array([0.4, 0.3, 0.2]), 1.0 / res
    shell = np.all(np.abs(P) <= half + vs / 2, 1) & ~np.all(np.abs(P) < half - vs / 2, 1)
    surf = P[shell]
    pick = np.random.default_rng(0).choice(len(surf), size=min(n, len(surf)), replace=False)
    return torch.tensor(surf[pick] - shift, dtype=torch.float32)[None]


def _psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    return -10.0 * math.log10(float(((pred - target) ** 2).mean()))


@pytest.mark.slow
def test_tiny_model_overfits_eight_views(one_thread):
    from geolrm_bench.model.config import get_config
    from geolrm_bench.model.geolrm import GeoLRM

    torch.manual_seed(0)
    images, masks, c2w, K = _box_views()
    cfg = get_config("tiny")
    model = GeoLRM(cfg).train()
    anchors = _surface_anchors(cfg.grid_res, cfg.max_tokens, cfg.offset_max / 2)
    imgs, c2w_b, K_b = images[None], c2w[None], K[None]

    decoder = list(model.lrm_generator.renderer.parameters())
    dec_ids = {id(p) for p in decoder}
    rest = [p for p in model.lrm_generator.parameters() if id(p) not in dec_ids]
    opt = torch.optim.Adam([{"params": decoder, "lr": 5e-3}, {"params": rest, "lr": 3e-3}])
    max_steps = 250
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max_steps, eta_min=1e-3)
    parts = {  # reconstruction-network parameters that the loss must reach
        "encoder convs": "encoder.low_level_encoder.0.weight",
        "dino": "encoder.model.embeddings.patch_embeddings.projection.weight",
        "self-attention": "transformer.layers.0.self_attention.wq.weight",
        "deformable cross-attention":
            "transformer.layers.0.cross_attention.deformable_attention.value_proj.weight",
        "decoder": "renderer.latent_decoder.0.weight",
    }
    params = dict(model.lrm_generator.named_parameters())
    missing = [n for n in parts.values() if n not in params]
    assert not missing, missing
    before = {k: params[n].detach().clone() for k, n in parts.items()}

    def render():
        g = model.reconstruct(imgs, c2w_b, K_b, anchors=anchors)
        return model.render(g, c2w_b, K_b, RES, RES)

    with torch.no_grad():
        start_psnr = _psnr(render()["rgb"][0], images)
    psnr = start_psnr
    for step in range(max_steps):
        out = render()
        mse = ((out["rgb"][0] - images) ** 2).mean()
        loss = mse + ((out["alpha"][0] - masks) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        psnr = -10.0 * math.log10(float(mse.detach()))
        if step % 20 == 0:
            print(f"step {step}: PSNR {psnr:.2f} dB", flush=True)
        if psnr > TARGET_PSNR + 0.75:
            break
    with torch.no_grad():
        final = _psnr(render()["rgb"][0].clamp(0, 1), images)
    assert final >= TARGET_PSNR, f"PSNR {start_psnr:.2f} -> {final:.2f} dB (last training step {psnr:.2f})"
    changed = {k: bool((params[n] != before[k]).any()) for k, n in parts.items()}
    assert all(changed.values()), changed
