"""The geometry-aware transformer shared by the proposal and reconstruction networks.

LLaMA-style pre-norm blocks (state-dict names as the official ``GeoTransformer``)::

    h   = x + SelfAttn(RMSNorm_sa(x))                      # 3D RoPE (paper maths)
    h'  = h + CA(RMSNorm_ca(h))                            # compat: RMSNorm_ca(h) + CA(...)
    out = h' + W2(silu(W1 n) * W3 n),  n = RMSNorm_ffn(h')
    final RMSNorm after the last block

Tokens: ``concat(xyz, query_token)`` with raw world xyz (normalised object frame, Z-up) in
channels 0..2. Cameras: ``c2w`` OpenGL [B, V, 4, 4], ``K`` normalised [B, V, 3, 3].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geolrm_bench.cameras import project_points
from geolrm_bench.model.deform_attn import DeformCrossAttention
from geolrm_bench.model.rope3d import apply_rope3d, rope3d_angles


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight``, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


def head_mixing_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The official fp32 fallback (compat quirk 1): attention ACROSS HEADS within each token.

    Args:
        q, k, v: ``[B, S, H, D]``.
    Returns:
        ``[B, S, H*D]``: ``O = softmax(q k^T / sqrt(D)) v`` with the ``H x H`` scores of each
        token, then ``O.transpose(1, 2).contiguous().view(B, S, H*D)`` (a token/head scramble).
    """
    b, s, h, d = q.shape
    dt = torch.promote_types(q.dtype, torch.float32)  # at least fp32, as the official branch
    scores = torch.matmul(q.to(dt), k.to(dt).transpose(2, 3)) / math.sqrt(d)  # [B, S, H, H]
    out = torch.matmul(scores.softmax(-1), v.to(dt)).to(v.dtype)  # [B, S, H, D]
    return out.transpose(1, 2).contiguous().view(b, s, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention without biases (``wq``, ``wk``, ``wv``, ``wo``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(
        self,
        x: Tensor,  # [B, S, dim]
        rope: tuple[Tensor, Tensor] | None = None,  # (cos, sin) [B, S, 3, Q] or None
        key_mask: Tensor | None = None,  # [B, S] bool, True = real token
        compat: bool = False,
    ) -> Tensor:  # [B, S, dim]
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.heads, self.head_dim)
        k = self.wk(x).view(b, s, self.heads, self.head_dim)
        v = self.wv(x).view(b, s, self.heads, self.head_dim)
        if compat:
            # RoPE rotates q and k of one token by the same orthogonal map: it cancels in the
            # per-token H x H scores, so it is skipped (rounding-level difference only).
            return self.wo(head_mixing_attention(q, k, v))
        if rope is not None:
            q = apply_rope3d(q, *rope)
            k = apply_rope3d(k, *rope)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, S]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask)  # [B, H, S, D]
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``, no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GeoTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_hidden: int, levels: int, points: int, value_dim: int,
                 eps: float = 1e-5):
        super().__init__()
        self.self_attention_norm = RMSNorm(dim, eps)
        self.self_attention = SelfAttention(dim, heads)
        self.cross_attention_norm = RMSNorm(dim, eps)
        self.cross_attention = DeformCrossAttention(dim, heads, levels, points, value_dim)
        self.ffn_norm = RMSNorm(dim, eps)
        self.feed_forward = FeedForward(dim, ffn_hidden)

    def forward(self, x: Tensor, value: Tensor, spatial_shapes: list[tuple[int, int]], ref_uv: Tensor,
                rope=None, key_mask=None, compat: bool = False, reference: bool = False) -> Tensor:
        h = x + self.self_attention(self.self_attention_norm(x), rope, key_mask, compat)
        n = self.cross_attention_norm(h)
        h = (n if compat else h) + self.cross_attention(n, value, spatial_shapes, ref_uv, reference=reference)
        return h + self.feed_forward(self.ffn_norm(h))


class GeoTransformer(nn.Module):
    """Stack of blocks with a learned query token and a final RMSNorm."""

    def __init__(self, dim: int, layers: int, heads: int, ffn_hidden: int, levels: int, points: int,
                 value_dim: int, eps: float = 1e-5, rope_theta: float = 1e4, use_rope: bool = True):
        super().__init__()
        self.dim, self.heads, self.rope_theta, self.use_rope = dim, heads, rope_theta, use_rope
        self.query_token = nn.Parameter(torch.randn(1, 1, dim - 3) * 0.02)
        self.layers = nn.ModuleList(
            GeoTransformerBlock(dim, heads, ffn_hidden, levels, points, value_dim, eps)
            for _ in range(layers))
        self.norm = RMSNorm(dim, eps)

    def forward(
        self,
        xyz: Tensor,  # [B, S, 3] token anchors, world units
        value: Tensor,  # [B*V, L, value_dim] flattened feature maps
        spatial_shapes: list[tuple[int, int]],
        c2w: Tensor,  # [B, V, 4, 4] OpenGL
        K: Tensor,  # [B, V, 3, 3] normalised
        positions: Tensor | None = None,  # [B, S, 3] integer voxel positions for RoPE-3D
        key_mask: Tensor | None = None,  # [B, S] bool, True = real token (paper maths only)
        compat: bool = False,
        reference: bool = False,
        intermediates: dict | None = None,
    ) -> Tensor:  # [B, S, dim]
        b, s, _ = xyz.shape
        h = torch.cat([xyz.to(self.query_token.dtype), self.query_token.expand(b, s, -1)], -1)
        ref_uv = project_points(xyz[:, None].float(), c2w.float(), K.float(), compat=compat)  # [B, V, S, 2]
        if intermediates is not None:
            intermediates["ref_uv"] = ref_uv
        ref_uv = ref_uv.reshape(-1, s, 2).to(h.dtype)
        rope = None
        if not compat and self.use_rope and positions is not None:
            rope = rope3d_angles(positions, self.dim // self.heads, self.rope_theta, dtype=h.dtype)
        for i, layer in enumerate(self.layers):
            h = layer(h, value, spatial_shapes, ref_uv, rope, key_mask, compat, reference)
            if intermediates is not None and i == 0:
                intermediates["layer0"] = h
        return self.norm(h)
