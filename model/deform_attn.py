"""Multi-view, multi-level deformable cross-attention (Deformable DETR / BEVFormer style).

Image coordinates: sampling locations are normalised OpenCV-style image coordinates
``(x, y)`` in [0, 1] (x right, y down, 0 = the outer edge of the first pixel, pixel centres at
``(i + 0.5) / W``). Sampling is bilinear with zero padding outside the image, i.e.
``grid_sample(map, 2 * loc - 1, align_corners=False, padding_mode="zeros")`` (the rule of the
mmcv kernel: ``h = y * H - 0.5``, ``w = x * W - 0.5``, zero outside).

Value maps are stored flattened: ``value [BV, L, H, Dh]`` with ``L = sum(h_l * w_l)``, each
level row-major (h, w), levels in order (level 0 first).

Two implementations of the core sampling, tested equal (values and gradients):

- :func:`deform_attn` (fast, used for inference and training): heads folded into the batch,
  one ``grid_sample`` per level, query chunks to bound memory;
- :func:`geolrm_bench._reference.deform_attn`: a plain loop over views, heads, levels and points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geolrm_bench import _reference

# Bound on the elements of one sampled block [BV*H, Dh, S_chunk, P] (about 256 MB in fp32).
_MAX_SAMPLED_ELEMENTS = 64 * 1024 * 1024


def deform_attn(
    value: Tensor,  # [BV, L, H, Dh]
    spatial_shapes: list[tuple[int, int]],  # per level (h_l, w_l)
    sampling_locations: Tensor,  # [BV, S, H, nL, P, 2] in [0, 1], (x, y)
    attention_weights: Tensor,  # [BV, S, H, nL, P]
) -> Tensor:  # [BV, S, H * Dh], head-major channels
    """Weighted bilinear samples of per-head value maps (fast batched path)."""
    bv, length, heads, dh = value.shape
    _, s, _, n_levels, n_points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    if sum(sizes) != length or len(spatial_shapes) != n_levels:
        raise ValueError(f"value length {length} / {n_levels} levels do not match "
                         f"spatial shapes {spatial_shapes}")
    grids = 2.0 * sampling_locations - 1.0  # [BV, S, H, nL, P, 2]
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(bv * heads, 1, s, n_levels, n_points)
    maps = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = value.narrow(1, sum(sizes[:lvl]), sizes[lvl])  # [BV, h*w, H, Dh]
        maps.append(v.permute(0, 2, 3, 1).reshape(bv * heads, dh, h, w))  # [BV*H, Dh, h, w]
    chunk = max(1, _MAX_SAMPLED_ELEMENTS // max(1, bv * heads * dh * n_points))
    outs = []
    for start in range(0, s, chunk):
        stop = min(s, start + chunk)
        acc = None
        for lvl in range(n_levels):
            g = grids[:, start:stop, :, lvl].permute(0, 2, 1, 3, 4)
            g = g.reshape(bv * heads, stop - start, n_points, 2)
            sampled = F.grid_sample(maps[lvl], g, mode="bilinear", padding_mode="zeros", align_corners=False)
            part = (sampled * weights[:, :, start:stop, lvl]).sum(-1)  # [BV*H, Dh, s_chunk]
            acc = part if acc is None else acc + part
        outs.append(acc)
    out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # [BV*H, Dh, S]
    return out.reshape(bv, heads * dh, s).transpose(1, 2)


class DeformableAttention(nn.Module):
    """Per-view multi-level deformable attention (state-dict names as the official
    ``MSDeformableAttention3D``: ``value_proj``, ``sampling_offsets``, ``attention_weights``).

    ``points == 0`` (ablation): no learned offsets; each head takes ONE bilinear sample exactly
    at the reference point of each level, weighted by a softmax over levels (so
    ``sampling_offsets`` does not exist and ``attention_weights`` is Linear(dim, heads * levels)).
    """

    def __init__(self, dim: int, heads: int, levels: int, points: int, value_dim: int):
        super().__init__()
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.value_proj = nn.Linear(value_dim, dim)
        if points > 0:
            self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * max(points, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: radial offsets (one direction per head, growing with the point
        index), uniform attention weights, Xavier value projection."""
        if self.points > 0:
            nn.init.zeros_(self.sampling_offsets.weight)
            theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
            grid = torch.stack([theta.cos(), theta.sin()], -1)
            grid = grid / grid.abs().max(-1, keepdim=True)[0]  # [H, 2]
            grid = grid[:, None, None, :].repeat(1, self.levels, self.points, 1)
            grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
            with torch.no_grad():
                self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)

    def forward(
        self,
        query: Tensor,  # [B, S, dim] (the same query for every view)
        value: Tensor,  # [B*V, L, value_dim]
        spatial_shapes: list[tuple[int, int]],
        ref_uv: Tensor,  # [B*V, S, 2] normalised (x, y) image coordinates
        reference: bool = False,
    ) -> Tensor:  # [B*V, S, dim]
        """Fast path: offsets and weights are computed once per token and shared by the views
        (the query does not depend on the view). ``reference``: the query is repeated per view
        first (as the official code does) and sampled with :func:`geolrm_bench._reference.deform_attn`."""
        b, s, d = query.shape
        bv = value.shape[0]
        views = bv // b
        h, lv, p = self.heads, self.levels, max(self.points, 1)
        if reference:
            query, rep = query[:, None].expand(b, views, s, d).reshape(bv, s, d), 1
        else:
            rep = views

        def per_view(x: Tensor) -> Tensor:  # [B or BV, S, ...] -> [BV, S, ...]
            return x if rep == 1 else x[:, None].expand(b, rep, *x.shape[1:]).reshape(bv, *x.shape[1:])

        v = self.value_proj(value).reshape(bv, value.shape[1], h, self.dim // h)
        loc = ref_uv[:, :, None, None, None, :].expand(bv, s, h, lv, p, 2)
        if self.points > 0:
            off = self.sampling_offsets(query).reshape(-1, s, h, lv, p, 2)
            norm = torch.tensor([[w, hh] for hh, w in spatial_shapes], dtype=query.dtype, device=query.device)
            loc = loc + per_view(off / norm[None, None, None, :, None, :])
        w = self.attention_weights(query).reshape(-1, s, h, lv * p).softmax(-1).reshape(-1, s, h, lv, p)
        fn = _reference.deform_attn if reference else deform_attn
        return fn(v, spatial_shapes, loc, per_view(w))


class DeformCrossAttention(nn.Module):
    """Multi-view deformable cross-attention with per-view softmax fusion.

    Each token is attended against every view separately (one reference point per view); the
    per-view outputs are fused with weights ``softmax_v(cross_view_weight(out_v))`` and passed
    through ``output_proj``. No visibility masking. Returns the update only (the block adds the
    residual).
    """

    def __init__(self, dim: int, heads: int, levels: int, points: int, value_dim: int):
        super().__init__()
        self.deformable_attention = DeformableAttention(dim, heads, levels, points, value_dim)
        self.cross_view_weight = nn.Linear(dim, 1)
        self.output_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,  # [B, S, dim] (already normalised)
        value: Tensor,  # [B*V, L, value_dim]
        spatial_shapes: list[tuple[int, int]],
        ref_uv: Tensor,  # [B*V, S, 2]
        reference: bool = False,
    ) -> Tensor:  # [B, S, dim]
        b, s, d = query.shape
        views = value.shape[0] // b
        out = self.deformable_attention(query, value, spatial_shapes, ref_uv, reference=reference)
        out = out.reshape(b, views, s, d)  # per-view outputs
        w = self.cross_view_weight(out).softmax(dim=1)  # [B, V, S, 1]
        return self.output_proj((out * w).sum(1))
