"""Network parts against independent references: RoPE-3D, both self-attentions, deformable
attention (fast vs plain reference, analytic bilinear values), tf-4.34 position embeddings."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import geolrm_bench.model.deform_attn as da
from geolrm_bench import _reference
from geolrm_bench.model.deform_attn import DeformCrossAttention, deform_attn
from geolrm_bench.model.encoder import interpolate_pos_encoding_tf434
from geolrm_bench.model.rope3d import apply_rope3d, rope3d_angles
from geolrm_bench.model.transformer import RMSNorm, SelfAttention


def _rope_scores(q, k, pos):  # [B,N,H,D] x2, [B,N,3] -> [B,H,N,N]
    cos, sin = rope3d_angles(pos, q.shape[-1], dtype=q.dtype)
    qr, kr = apply_rope3d(q, cos, sin), apply_rope3d(k, cos, sin)
    return torch.einsum("bihd,bjhd->bhij", qr, kr)


def test_rope3d_matches_plain_pair_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 24, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 128, (2, 5, 3), generator=g)
    cos, sin = rope3d_angles(pos, 24, dtype=torch.float64)
    torch.testing.assert_close(apply_rope3d(x, cos, sin), _reference.apply_rope3d(x, pos), rtol=0, atol=1e-12)
    # a rotation: norms of every (r, r + Q) pair are kept
    torch.testing.assert_close(apply_rope3d(x, cos, sin).norm(dim=-1), x.norm(dim=-1), rtol=0, atol=1e-12)


def test_rope3d_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 6, 2, 12, generator=g, dtype=torch.float64)
    k = torch.randn(1, 6, 2, 12, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 128, (1, 6, 3), generator=g)
    base = _rope_scores(q, k, pos)
    shifted = _rope_scores(q, k, pos + torch.tensor([5, -3, 17]))
    torch.testing.assert_close(shifted, base, rtol=0, atol=1e-10)
    # ... and they do depend on it: moving one token changes its scores
    moved = pos.clone()
    moved[0, 0] += torch.tensor([3, 0, 0])
    assert (_rope_scores(q, k, moved) - base).abs().max() > 1e-3
    # no rotation at position 0
    cos, sin = rope3d_angles(torch.zeros(1, 6, 3), 12, dtype=torch.float64)
    torch.testing.assert_close(apply_rope3d(q, cos, sin), q)


def test_compat_self_attention_equals_float64_head_mixing_formula():
    """OFFICIAL_FORWARD.md 4.3: per token an H x H softmax over heads, then output row r,
    chunk t = O[(r mod m) H + t, head r div m] with m = S / H."""
    torch.manual_seed(0)
    b, s, h, d = 2, 8, 4, 6
    attn = SelfAttention(h * d, h).double()
    x = torch.randn(b, s, h * d, dtype=torch.float64)
    with torch.no_grad():
        ours = attn(x, compat=True)

    wq, wk, wv, wo = (m.weight.detach() for m in (attn.wq, attn.wk, attn.wv, attn.wo))
    ref = torch.zeros(b, s, h * d, dtype=torch.float64)
    m = s // h
    for bi in range(b):
        q = (x[bi] @ wq.T).reshape(s, h, d)
        k = (x[bi] @ wk.T).reshape(s, h, d)
        v = (x[bi] @ wv.T).reshape(s, h, d)
        o = torch.zeros(s, h, d, dtype=torch.float64)
        for tok in range(s):
            for hi in range(h):
                logits = torch.tensor([float(q[tok, hi] @ k[tok, hj]) / math.sqrt(d) for hj in range(h)],
                                      dtype=torch.float64)
                w = torch.exp(logits - logits.max())
                w = w / w.sum()
                o[tok, hi] = sum(w[hj] * v[tok, hj] for hj in range(h))
        mixed = torch.zeros(s, h * d, dtype=torch.float64)
        for r in range(s):
            for t in range(h):
                mixed[r, t * d:(t + 1) * d] = o[(r % m) * h + t, r // m]
        ref[bi] = mixed @ wo.T
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_token_self_attention_with_rope_equals_float64_softmax():
    torch.manual_seed(0)
    b, s, h, d = 2, 7, 2, 12
    attn = SelfAttention(h * d, h).double()
    x = torch.randn(b, s, h * d, dtype=torch.float64)
    pos = torch.randint(0, 32, (b, s, 3))
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[1, 5:] = False
    rope = rope3d_angles(pos, d, dtype=torch.float64)
    ours = attn(x, rope=rope, key_mask=mask)
    q = _reference.apply_rope3d((x @ attn.wq.weight.T).view(b, s, h, d), pos)
    k = _reference.apply_rope3d((x @ attn.wk.weight.T).view(b, s, h, d), pos)
    v = (x @ attn.wv.weight.T).view(b, s, h, d)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    scores = scores.masked_fill(~mask[:, None, None, :], -math.inf)
    out = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(b, s, h * d)
    torch.testing.assert_close(ours, out @ attn.wo.weight.T, rtol=0, atol=1e-12)


def test_rmsnorm_formula():
    x = torch.randn(3, 10, dtype=torch.float64)
    n = RMSNorm(10, eps=1e-5).double()
    with torch.no_grad():
        n.weight.uniform_(0.5, 1.5)
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * n.weight
    torch.testing.assert_close(n(x), ref)


SHAPES = [
    # BV, S, H, Dh, levels, points
    (2, 5, 2, 3, [(4, 5), (3, 2)], 2),
    (3, 7, 4, 2, [(6, 6)], 1),
    (1, 4, 1, 4, [(2, 3), (5, 4)], 3),
]


def _deform_inputs(bv, s, h, dh, shapes, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    length = sum(a * b for a, b in shapes)
    value = torch.randn(bv, length, h, dh, generator=g, dtype=torch.float64)
    # some locations outside the image
    loc = torch.rand(bv, s, h, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    w = torch.rand(bv, s, h, len(shapes), p, generator=g, dtype=torch.float64)
    return value, loc, w


@pytest.mark.parametrize("bv,s,h,dh,shapes,p", SHAPES)
def test_deform_attn_fast_equals_reference_values_and_gradients(bv, s, h, dh, shapes, p, monkeypatch):
    value, loc, w = _deform_inputs(bv, s, h, dh, shapes, p)
    leaves = [t.clone().requires_grad_(True) for t in (value, loc, w)]
    fast = deform_attn(leaves[0], shapes, leaves[1], leaves[2])
    ref_leaves = [t.clone().requires_grad_(True) for t in (value, loc, w)]
    ref = _reference.deform_attn(ref_leaves[0], shapes, ref_leaves[1], ref_leaves[2])
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    up = torch.randn_like(fast)
    g_fast = torch.autograd.grad(fast, leaves, up)
    g_ref = torch.autograd.grad(ref, ref_leaves, up)
    for a, b_ in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b_, rtol=0, atol=1e-10)
    # the query-chunked path (small memory bound) gives the same values
    monkeypatch.setattr(da, "_MAX_SAMPLED_ELEMENTS", 1)
    torch.testing.assert_close(deform_attn(value, shapes, loc, w), ref.detach(), rtol=0, atol=1e-12)


def test_deform_attn_samples_bilinear_maps_at_the_mmcv_pixel_rule():
    """A value map linear in (row, col) is reproduced exactly by bilinear sampling inside the
    image, at pixel coordinates (x W - 0.5, y H - 0.5)."""
    hgt, wid = 6, 9
    rows, cols = torch.meshgrid(torch.arange(hgt, dtype=torch.float64),
                                torch.arange(wid, dtype=torch.float64), indexing="ij")
    vmap = (2.0 * rows - 0.5 * cols + 3.0).reshape(1, hgt * wid, 1, 1)
    g = torch.Generator().manual_seed(3)
    loc = torch.rand(1, 10, 1, 1, 1, 2, generator=g, dtype=torch.float64)
    loc[..., 0] = 0.5 / wid + loc[..., 0] * (wid - 1) / wid  # keep within pixel centres
    loc[..., 1] = 0.5 / hgt + loc[..., 1] * (hgt - 1) / hgt
    out = deform_attn(vmap, [(hgt, wid)], loc, torch.ones(1, 10, 1, 1, 1, dtype=torch.float64))
    x_px, y_px = loc[0, :, 0, 0, 0, 0] * wid - 0.5, loc[0, :, 0, 0, 0, 1] * hgt - 0.5
    torch.testing.assert_close(out[0, :, 0], 2.0 * y_px - 0.5 * x_px + 3.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("points", [0, 2])
def test_cross_attention_module_fast_equals_reference(points):
    torch.manual_seed(0)
    b, v, s, dim, heads = 2, 3, 6, 12, 2
    shapes = [(4, 4), (2, 3)]
    ca = DeformCrossAttention(dim, heads, 2, points, value_dim=5).double()
    with torch.no_grad():  # non-trivial weights (the init zeroes the attention logits)
        for prm in ca.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    q = torch.randn(b, s, dim, dtype=torch.float64)
    value = torch.randn(b * v, 22, 5, dtype=torch.float64)
    ref_uv = torch.rand(b * v, s, 2, dtype=torch.float64)
    torch.testing.assert_close(ca(q, value, shapes, ref_uv), ca(q, value, shapes, ref_uv, reference=True),
                               rtol=0, atol=1e-12)


def test_cross_view_fusion_is_a_softmax_over_views():
    """Identical views give the single-view output (weights sum to one)."""
    torch.manual_seed(0)
    ca = DeformCrossAttention(12, 2, 1, 2, value_dim=5).double()
    q = torch.randn(1, 4, 12, dtype=torch.float64)
    value = torch.randn(1, 16, 5, dtype=torch.float64)
    uv = torch.rand(1, 4, 2, dtype=torch.float64)
    one = ca(q, value, [(4, 4)], uv)
    three = ca(q, value.expand(3, -1, -1), [(4, 4)], uv.expand(3, -1, -1))
    torch.testing.assert_close(three, one)


def _bicubic_matrix(src, size, a=-0.75):  # [n] source coords -> [n, size] weights (Keys kernel, clamped)
    def kern(d):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        if d < 2:
            return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
        return 0.0

    mat = torch.zeros(len(src), size, dtype=torch.float64)
    for i, x in enumerate(src.tolist()):
        x0 = math.floor(x)
        for tap in range(x0 - 1, x0 + 3):
            mat[i, min(max(tap, 0), size - 1)] += kern(x - tap)
    return mat


def test_tf434_position_embedding_interpolation_formula():
    """transformers 4.34.1 samples source cell (dst + 0.5) * 37 / (n + 0.1) - 0.5 (bicubic,
    Keys a = -0.75, clamped borders): compared with a float64 re-derivation."""
    g, n, dim = 37, 16, 3
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(1, g * g + 1, dim, generator=gen)
    fake = SimpleNamespace(position_embeddings=pos, patch_embeddings=SimpleNamespace(patch_size=(14, 14)))
    out = interpolate_pos_encoding_tf434(fake, torch.zeros(1, n * n + 1, dim), n * 14, n * 14)
    assert out.shape == (1, n * n + 1, dim)
    assert torch.equal(out[0, 0], pos[0, 0])
    grid = pos[0, 1:].double().reshape(g, g, dim)

    def expected(scale_den):
        src = (torch.arange(n, dtype=torch.float64) + 0.5) * g / scale_den - 0.5
        a = _bicubic_matrix(src, g)
        return torch.einsum("ir,rcd,jc->ijd", a, grid, a).reshape(n * n, dim)

    torch.testing.assert_close(out[0, 1:].double(), expected(n + 0.1), rtol=0, atol=1e-5)
    # transformers 5 (size=(n, n)) samples elsewhere: the compat override matters
    assert (expected(n) - expected(n + 0.1)).abs().max() > 1e-2
    # same number of patches as the table: no interpolation at all
    same = interpolate_pos_encoding_tf434(fake, torch.zeros(1, g * g + 1, dim), g * 14, g * 14)
    assert same is pos
