"""3D rotary position embedding (RoPE-3D) over integer voxel positions.

The head dimension D is split into three thirds, one per axis (x, y, z). Within a third, with
Q = D / 6, channel r and channel r + Q (r < Q) form a pair rotated together ("rotate-half"
layout, not interleaved) by the angle ``pos_axis * theta^(-r / Q)``::

    u' = u cos(a) - v sin(a)
    v' = v cos(a) + u sin(a)

The rotation is the same for every head. Positions are integer voxel indices (any integer
offset is allowed: attention scores only depend on position differences).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geolrm_bench.errors import BenchError


def rope3d_angles(positions: Tensor, head_dim: int, theta: float = 10000.0,
                  dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Cosines and sines for :func:`apply_rope3d`.

    Args:
        positions: ``[B, N, 3]`` integer (or float) voxel positions, axes (x, y, z).
        head_dim: D, a multiple of 6.
        theta: RoPE base.
        dtype: of the result (angles are computed in float64).
    Returns:
        ``(cos, sin)``, each ``[B, N, 3, Q]`` with Q = D / 6.
    """
    if head_dim % 6:
        raise BenchError(f"RoPE-3D needs a head dim divisible by 6, got {head_dim}")
    q = head_dim // 6
    inv_freq = theta ** (-torch.arange(q, dtype=torch.float64, device=positions.device) / q)  # [Q]
    angles = positions.to(torch.float64)[..., None] * inv_freq  # [B, N, 3, Q]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope3d(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys.

    Args:
        x: ``[B, N, H, D]`` per-head vectors.
        cos, sin: ``[B, N, 3, Q]`` from :func:`rope3d_angles` (D = 6 Q).
    Returns:
        ``[B, N, H, D]`` rotated vectors (same dtype as ``x``).
    """
    b, n, h, d = x.shape
    q = d // 6
    xs = x.reshape(b, n, h, 3, 2, q)  # [B, N, H, axis, half, Q]
    u, v = xs[..., 0, :], xs[..., 1, :]  # [B, N, H, 3, Q]
    c = cos[:, :, None].to(x.dtype)  # [B, N, 1, 3, Q]
    s = sin[:, :, None].to(x.dtype)
    out = torch.stack((u * c - v * s, v * c + u * s), dim=-2)  # [B, N, H, 3, 2, Q]
    return out.reshape(b, n, h, d)
