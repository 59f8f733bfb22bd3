"""Hierarchical image encoder: DINOv2 high-level features + a stride-4 conv on RGB + Plücker rays.

Inputs: images ``[B, V, 3, H, W]`` in [0, 1] (composited on white), ``c2w`` OpenGL
``[B, V, 4, 4]``, normalised ``K`` ``[B, V, 3, 3]``.

- High level (level 1): Hugging Face ``Dinov2Backbone`` on ImageNet-normalised RGB, last
  feature map after the backbone's layernorm, CLS dropped -> ``[768, H/14, W/14]`` ->
  ``deconv`` = ConvTranspose2d(768->feat, k4, s2, p1, no bias) + BatchNorm2d, no activation.
- Low level (level 0): ``low_level_encoder`` = Conv2d(9->feat, k4, s4, no bias) + BatchNorm2d
  on ``concat(ImageNet-normalised RGB, d, o x d)`` (Plücker rays, world frame).
- Value maps, per image: ``cat([low.flatten, high.flatten])`` -> ``[B*V, L, feat]`` with
  ``spatial_shapes = [(h_low, w_low), (h_high, w_high)]`` (level 0 = low, level 1 = DINO).
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geolrm_bench.cameras import plucker_rays

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def interpolate_pos_encoding_tf434(self, embeddings: Tensor, height: int, width: int) -> Tensor:
    """transformers-4.34.1 DINOv2 position-embedding interpolation (compat quirk 5).

    The ``g x g`` grid (g = 37 for dinov2-base) is resized with ``scale_factor = ((n + 0.1) / g)``
    (bicubic, align_corners=False), so a destination cell samples the source at
    ``(dst + 0.5) * g / (n + 0.1) - 0.5`` instead of transformers 5's ``(dst + 0.5) * g / n - 0.5``.
    Bound to ``Dinov2Embeddings`` instances as ``interpolate_pos_encoding``.
    """
    num_patches = embeddings.shape[1] - 1
    pos = self.position_embeddings
    num_positions = pos.shape[1] - 1
    if num_patches == num_positions and height == width:
        return pos
    dim = embeddings.shape[-1]
    ph, pw = self.patch_embeddings.patch_size
    nh, nw = height // ph, width // pw
    g = int(math.sqrt(num_positions))
    grid = pos[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    out = F.interpolate(grid.float(), scale_factor=((nh + 0.1) / g, (nw + 0.1) / g), mode="bicubic",
                        align_corners=False).to(pos.dtype)
    if tuple(out.shape[-2:]) != (nh, nw):
        raise RuntimeError(f"tf4.34 position-embedding interpolation gave {tuple(out.shape[-2:])}, "
                           f"not {(nh, nw)}")
    out = out.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos[:, :1], out], dim=1)


def build_dino(values: dict, compat: bool = False) -> nn.Module:
    """``Dinov2Backbone`` from Dinov2Config values (no hub access); out_features = last stage."""
    from transformers import Dinov2Backbone, Dinov2Config

    cfg = Dinov2Config(**values, out_features=[f"stage{values['num_hidden_layers']}"])
    model = Dinov2Backbone(cfg)
    if compat:
        set_dino_compat(model, True)
    return model


def set_dino_compat(model: nn.Module, compat: bool) -> None:
    emb = model.embeddings
    if compat:
        emb.interpolate_pos_encoding = types.MethodType(interpolate_pos_encoding_tf434, emb)
    elif "interpolate_pos_encoding" in emb.__dict__:
        del emb.interpolate_pos_encoding


class ImageEncoder(nn.Module):
    """One network's encoder (``model``, ``deconv``, ``low_level_encoder`` as in the checkpoint)."""

    def __init__(self, dino_values: dict, feat_dim: int = 384, use_plucker: bool = True,
                 use_low_level: bool = True, use_high_level: bool = True, compat: bool = False):
        super().__init__()
        self.use_plucker, self.use_low_level, self.use_high_level = use_plucker, use_low_level, use_high_level
        self.compat = compat
        if use_high_level:
            width = dino_values["hidden_size"]
            self.model = build_dino(dino_values, compat)
            self.deconv = nn.Sequential(nn.ConvTranspose2d(width, feat_dim, 4, 2, 1, bias=False),
                                        nn.BatchNorm2d(feat_dim))
        if use_low_level:
            in_ch = 9 if use_plucker else 3
            self.low_level_encoder = nn.Sequential(nn.Conv2d(in_ch, feat_dim, 4, 4, bias=False),
                                                   nn.BatchNorm2d(feat_dim))

    def set_compat(self, compat: bool) -> None:
        self.compat = compat
        if self.use_high_level:
            set_dino_compat(self.model, compat)

    def forward(
        self,
        images: Tensor,  # [B, V, 3, H, W] in [0, 1]
        c2w: Tensor,  # [B, V, 4, 4] OpenGL
        K: Tensor,  # [B, V, 3, 3] normalised
        intermediates: dict | None = None,
    ) -> tuple[Tensor, list[tuple[int, int]]]:  # value [B*V, L, feat], spatial shapes per level
        b, v, _, h, w = images.shape
        x = images.reshape(b * v, 3, h, w)
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        maps, shapes = [], []
        if self.use_low_level:
            inp = x
            if self.use_plucker:
                rays = plucker_rays(c2w.reshape(-1, 4, 4).float(), K.reshape(-1, 3, 3).float(), h, w,
                                    compat=self.compat)  # [BV, 6, H, W] float32
                if intermediates is not None:
                    intermediates["plucker"] = rays
                inp = torch.cat([x, rays.to(x.dtype)], 1)
            low = self.low_level_encoder(inp)  # [BV, feat, H/4, W/4]
            if intermediates is not None:
                intermediates["low"] = low
            maps.append(low)
        if self.use_high_level:
            dino = self.model(x).feature_maps[-1]  # [BV, 768, H/14, W/14]
            high = self.deconv(dino)  # [BV, feat, 2H/14, 2W/14]
            if intermediates is not None:
                intermediates["dino"] = dino
                intermediates["high"] = high
            maps.append(high)
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        value = torch.cat([m.flatten(2) for m in maps], -1).transpose(1, 2)  # [BV, L, feat]
        return value, shapes
