"""The ``tiny`` preset end to end on CPU, plus the geometric pieces checked against independent
formulas: logit-grid permutation, anchors, Gaussian activations, projection and Plücker rays."""

from __future__ import annotations

import math

import pytest
import torch

from geolrm_bench import cameras
from geolrm_bench.cameras import plucker_rays, project_points
from geolrm_bench.errors import BenchError
from geolrm_bench.model.config import PRESETS, get_config
from geolrm_bench.model.geolrm import GeoLRM

SIZE = 56


def _views(b=1, v=3, size=SIZE, seed=0):
    c2w = torch.stack([torch.from_numpy(cameras.orbit_c2w(15.0 + 10 * i, 360.0 * i / v + 10, 1.8,
                                                          convention="opengl")).float() for i in range(v)])
    K = torch.tensor([[1.3889, 0, 0.5], [0, 1.3889, 0.5], [0, 0, 1.0]]).repeat(b, v, 1, 1)
    images = torch.rand(b, v, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return images, c2w[None].repeat(b, 1, 1, 1), K


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return GeoLRM(get_config("tiny", input_size=SIZE))


def test_presets_are_consistent():
    assert set(PRESETS) == {"paper", "small", "tiny"}
    assert get_config("small").reconstruction.layers == 12 and get_config("small").input_size == 224
    with pytest.raises(BenchError, match="unknown model preset"):
        get_config("huge")
    with pytest.raises(BenchError, match="feature level"):
        get_config("tiny", use_low_level=False, use_high_level=False)


def test_tiny_parameter_budget(tiny):
    n = sum(p.numel() for p in tiny.parameters())
    assert 5e5 < n < 1e7


def test_tiny_forward_backward_reaches_every_part(tiny):
    tiny.train()
    images, c2w, K = _views()
    logits = tiny.propose(images, c2w, K)
    r = tiny.cfg.grid_res
    assert logits.shape == (1, r, r, r) and torch.isfinite(logits).all()
    g = tiny.reconstruct(images, c2w, K, anchors=tiny.anchors_from_occupancy(logits.detach(), max_tokens=128))
    assert g.means.shape == (1, 128 * tiny.cfg.gs_per_token, 3)
    loss = logits.float().sigmoid().mean() + g.colors.mean() + g.opacities.mean() + g.means.square().mean()
    tiny.zero_grad()
    loss.backward()
    for net in ("serializer", "lrm_generator"):
        for part in ("encoder.model.embeddings.patch_embeddings.projection.weight",
                     "encoder.low_level_encoder.0.weight", "encoder.deconv.0.weight",
                     "transformer.query_token", "transformer.layers.0.self_attention.wq.weight",
                     "transformer.layers.0.cross_attention.deformable_attention.sampling_offsets.weight",
                     "transformer.layers.1.feed_forward.w2.weight", "transformer.norm.weight"):
            grad = tiny.get_parameter(f"{net}.{part}").grad
            assert grad is not None and grad.abs().sum() > 0, f"{net}.{part}"
    assert tiny.get_parameter("lrm_generator.renderer.latent_decoder.0.weight").grad.abs().sum() > 0
    assert tiny.get_parameter("serializer.upsample.weight").grad.abs().sum() > 0
    tiny.eval()


@pytest.mark.parametrize("change,absent", [
    ({"use_plucker": False}, None),
    ({"use_low_level": False}, "lrm_generator.encoder.low_level_encoder.0.weight"),
    ({"use_high_level": False}, "lrm_generator.encoder.deconv.0.weight"),
    ({"use_rope": False}, None),
    ({"proposal": {"dim": 96, "layers": 1, "heads": 4, "ffn_hidden": 96, "points": 0},
      "reconstruction": {"dim": 96, "layers": 1, "heads": 4, "ffn_hidden": 96, "points": 0}},
     "lrm_generator.transformer.layers.0.cross_attention.deformable_attention.sampling_offsets.weight"),
])
def test_ablation_switches_build_and_run(change, absent):
    torch.manual_seed(0)
    model = GeoLRM(get_config("tiny", input_size=SIZE, **change)).eval()
    keys = set(model.state_dict())
    if absent is not None:
        assert absent not in keys
    if change.get("use_plucker") is False:
        assert model.lrm_generator.encoder.low_level_encoder[0].in_channels == 3
    images, c2w, K = _views(v=2)
    with torch.no_grad():
        g = model.reconstruct(images, c2w, K, max_tokens=32)
    assert torch.isfinite(g.means).all() and g.means.shape[1] == 32 * model.cfg.gs_per_token


def test_full_model_fast_path_equals_plain_reference(tiny):
    """Whole networks with the plain deformable-attention reference (query repeated per view,
    one grid_sample per view/head/level/point) give the fast path's outputs."""
    images, c2w, K = _views(v=2)
    xyz = torch.rand(1, 12, 3, generator=torch.Generator().manual_seed(2)) - 0.5
    with torch.no_grad():
        fast = tiny.reconstruct(images, c2w, K, anchors=xyz)
        ref = tiny.reconstruct(images, c2w, K, anchors=xyz, reference=True)
    torch.testing.assert_close(fast.means, ref.means, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.colors, ref.colors, rtol=0, atol=1e-5)


def test_proposal_logit_grid_permutation(tiny):
    """Token t = T^2 i + T j + k, Linear channel c = f^2 a + f b + c'
    -> voxel (f i + a, f j + b, f k + c')."""
    cfg = tiny.cfg
    t, f = cfg.token_res, cfg.upsample_factor
    ser = tiny.serializer

    def fake_transformer(module, args, out):  # token index in channel 0
        return torch.arange(t**3, dtype=out.dtype)[None, :, None].expand_as(out).contiguous()

    handle = ser.transformer.register_forward_hook(fake_transformer)
    saved = ser.upsample.weight.detach().clone(), ser.upsample.bias.detach().clone()
    try:
        with torch.no_grad():
            ser.upsample.weight.zero_()
            ser.upsample.weight[:, 0] = 1000.0  # channel c of token t: 1000 t + c
            ser.upsample.bias.copy_(torch.arange(f**3, dtype=torch.float32))
            images, c2w, K = _views(v=2)
            logits = tiny.propose(images, c2w, K)[0]
    finally:
        handle.remove()
        with torch.no_grad():
            ser.upsample.weight.copy_(saved[0])
            ser.upsample.bias.copy_(saved[1])
    for X, Y, Z in [(0, 0, 0), (5, 17, 30), (31, 2, 9), (12, 12, 12), (7, 31, 1)]:
        i, a = divmod(X, f)
        j, b = divmod(Y, f)
        k, c = divmod(Z, f)
        token = t * t * i + t * j + k
        channel = f * f * a + f * b + c
        assert float(logits[X, Y, Z]) == pytest.approx(token * 1000.0 + channel, abs=1e-3), (X, Y, Z)


def test_anchors_paper_maths_and_compat(tiny):
    r = tiny.cfg.grid_res
    occ = torch.zeros(2, r, r, r, dtype=torch.bool)
    occ[0, 3, 4, 5] = occ[0, 0, 0, r - 1] = occ[0, r - 1, 2, 2] = True
    occ[1, 10, 10, 10] = True
    a = tiny.anchors_from_occupancy(occ)
    assert a.xyz.shape == (2, 3, 3) and a.mask.tolist() == [[True] * 3, [True, False, False]]
    exp0 = torch.tensor([[0, 0, r - 1], [3, 4, 5], [r - 1, 2, 2]], dtype=torch.float32)  # C order
    torch.testing.assert_close(a.index[0], exp0.long())
    torch.testing.assert_close(a.xyz[0], (exp0 + 0.5) / r - 0.5)
    # cap: a seeded subset, kept in C order
    many = torch.rand(1, r, r, r, generator=torch.Generator().manual_seed(0)) > 0.9
    sub = tiny.anchors_from_occupancy(many, max_tokens=50)
    flat = sub.index[0, :, 0] * r * r + sub.index[0, :, 1] * r + sub.index[0, :, 2]
    assert sub.xyz.shape[1] == 50 and torch.all(flat[1:] > flat[:-1])
    assert many[0][tuple(sub.index[0].T)].all()
    again = tiny.anchors_from_occupancy(many, max_tokens=50)
    assert torch.equal(again.index, sub.index)

    compat = GeoLRM.__new__(GeoLRM)
    torch.nn.Module.__init__(compat)
    compat.cfg = tiny.cfg.replace(compat=True)
    c = compat.anchors_from_occupancy(occ, max_tokens=6)
    assert c.xyz.shape == (2, 6, 3) and c.mask[0].tolist() == [True] * 3 + [False] * 3
    torch.testing.assert_close(c.xyz[0, :3], -0.5 + exp0 / (r - 1))  # grid vertices
    assert torch.all(c.xyz[0, 3:] == 0)  # zero padding kept
    n = int(many.sum())
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    cp = compat.anchors_from_occupancy(many, max_tokens=40, perm=perm)
    all_idx = many[0].nonzero().float()
    torch.testing.assert_close(cp.xyz[0], -0.5 + all_idx[perm[:40]] / (r - 1))


def test_batch_padding_does_not_change_real_tokens(tiny):
    """Paper maths: a padded batch item gives the same Gaussians as running it alone; its
    padding Gaussians are transparent."""
    images, c2w, K = _views(b=2)
    r = tiny.cfg.grid_res
    occ = torch.zeros(2, r, r, r, dtype=torch.bool)
    occ[0, 10:14, 12:16, 14:18] = True  # 64 voxels
    occ[1, 15:17, 15:17, 15:18] = True  # 12 voxels
    with torch.no_grad():
        both = tiny.reconstruct(images, c2w, K, anchors=tiny.anchors_from_occupancy(occ))
        alone = tiny.reconstruct(images[1:], c2w[1:], K[1:], anchors=tiny.anchors_from_occupancy(occ[1:]))
    n = alone.means.shape[1]
    torch.testing.assert_close(both.means[1, :n], alone.means[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(both.colors[1, :n], alone.colors[0], rtol=0, atol=1e-5)
    assert torch.all(both.opacities[1, n:] == 0)


def test_gaussian_decoder_activations_float64(tiny):
    dec = tiny.lrm_generator.renderer
    g_per = tiny.cfg.gs_per_token
    lat = torch.randn(1, 3, tiny.cfg.reconstruction.dim, dtype=torch.float64)
    anchors = torch.rand(1, 3, 3, dtype=torch.float64) - 0.5
    dec64 = dec.double()
    try:
        with torch.no_grad():
            g = dec64(anchors, lat)
            l0, l2 = dec64.latent_decoder[0], dec64.latent_decoder[2]
            hid = lat @ l0.weight.T + l0.bias
            raw = (hid / (1 + torch.exp(-hid))) @ l2.weight.T + l2.bias  # SiLU
    finally:
        dec.float()
    raw = raw.reshape(3, g_per, 14)
    sig = 1 / (1 + torch.exp(-raw))
    means = anchors[0, :, None] + sig[..., 0:3] * 0.2
    q = raw[..., 7:11] / raw[..., 7:11].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(g.means[0], means.reshape(-1, 3))
    torch.testing.assert_close(g.opacities[0], sig[..., 3].reshape(-1))
    torch.testing.assert_close(g.scales[0], (sig[..., 4:7] * 0.02).reshape(-1, 3))
    torch.testing.assert_close(g.quats[0], q.reshape(-1, 4))
    torch.testing.assert_close(g.colors[0], (raw[..., 11:14].clamp(-0.5, 0.5) + 0.5).reshape(-1, 3))


def test_projection_lands_on_the_analytic_pixel():
    """Camera at (0, -2, 0) looking at the origin along +y, Z up (OpenGL: x right, y up, z back)."""
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -2], [0, 1, 0, 0], [0, 0, 0, 1]])[None, None]
    K = torch.tensor([[1.5, 0, 0.5], [0, 1.2, 0.45], [0, 0, 1]])[None, None]
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.2, 0.0, 0.1], [-0.3, 0.5, -0.2]]])
    depth = 2.0 + pts[0, :, 1]
    u = 0.5 + 1.5 * pts[0, :, 0] / depth  # right = +x
    v = 0.45 - 1.2 * pts[0, :, 2] / depth  # up = +z, v grows downwards
    uv = project_points(pts[:, None], c2w, K)[0, 0]
    torch.testing.assert_close(uv, torch.stack([u, v], -1))
    # the official formula (u = 1 - u) agrees when cx = 0.5
    K2 = K.clone()
    K2[..., 1, 2] = 0.5
    torch.testing.assert_close(project_points(pts[:, None], c2w, K2, compat=True),
                               project_points(pts[:, None], c2w, K2))


def test_model_projection_matches_geolrm_bench_cameras(tiny):
    images, c2w, K = _views(v=3)
    xyz = torch.rand(1, 20, 3) - 0.5
    inter: dict = {}
    with torch.no_grad():
        tiny.reconstruct(images, c2w, K, anchors=xyz, intermediates=inter)
    expected = cameras.project_points(xyz[0].double(), c2w[0].double(), K[0].double())  # [V, N, 2]
    torch.testing.assert_close(inter["ref_uv"][0].double(), expected, rtol=0, atol=1e-5)


def test_plucker_rays_official_form_and_geometry():
    _, c2w, K = _views(v=2)
    c2w, K = c2w[0], K[0]
    h = w = 16
    ours = plucker_rays(c2w, K, h, w, compat=True)
    # float32 vs float64; paper maths (full K) == official form for fx = fy, centred, square
    torch.testing.assert_close(ours.double(), plucker_rays(c2w.double(), K.double(), h, w, compat=True),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(plucker_rays(c2w, K, h, w), ours, rtol=0, atol=1e-6)
    # the ray of a pixel passes through a 3D point that projects onto that pixel centre
    pt = torch.tensor([[0.1, -0.2, 0.15]])
    uv = project_points(pt[None], c2w[None], K[None])[0, 0, 0]  # view 0
    col, row = uv[0] * w - 0.5, uv[1] * h - 0.5
    d = ours[0, :3]  # [3, H, W]
    # bilinear interpolation of d is exact (d is affine in the pixel position)
    c0, r0 = int(math.floor(col)), int(math.floor(row))
    fc, fr = col - c0, row - r0
    dd = ((1 - fr) * ((1 - fc) * d[:, r0, c0] + fc * d[:, r0, c0 + 1])
          + fr * ((1 - fc) * d[:, r0 + 1, c0] + fc * d[:, r0 + 1, c0 + 1]))
    o = c2w[0, :3, 3]
    assert torch.linalg.cross(pt[0] - o, dd).norm() < 1e-5 * (pt[0] - o).norm() * dd.norm()
    # moment channels are o x d; camera z = -1 component of d
    o_all = c2w[:, None, None, :3, 3].expand(2, h, w, 3)
    moment = torch.linalg.cross(o_all, ours[:, :3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours[:, 3:], moment)
    d_cam = torch.einsum("vji,vjhw->vihw", c2w[:, :3, :3], ours[:, :3])
    torch.testing.assert_close(d_cam[:, 2], -torch.ones(2, h, w))


def test_resize_and_input_errors(tiny):
    images, c2w, K = _views(size=40)
    assert tiny.prepare_images(images).shape[-2:] == (SIZE, SIZE)
    assert tiny.prepare_images(images, resize=False).shape[-2:] == (40, 40)
    with pytest.raises(BenchError, match="images must be"):
        tiny.propose(images[0], c2w, K)
    with pytest.raises(BenchError, match="cameras must be"):
        tiny.propose(images, c2w[:, :2], K)
    with pytest.raises(BenchError, match="no occupied voxel"):
        r = tiny.cfg.grid_res
        tiny.anchors_from_occupancy(torch.zeros(1, r, r, r, dtype=torch.bool))


def test_empty_proposal_takes_the_top_logits(tiny):
    """Paper maths: fewer than min_tokens occupied voxels -> the min_tokens highest logits (not an error)."""
    r = tiny.cfg.grid_res
    logits = -torch.rand(1, r, r, r) - 1  # nothing occupied
    top = [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    for i, (x, y, z) in enumerate(top):
        logits[0, x, y, z] = -0.1 * (i + 1)  # the three highest, all still <= 0
    anchors = tiny.anchors_from_occupancy(logits, min_tokens=3)
    assert sorted(map(tuple, anchors.index[0].tolist())) == top  # C order, the three voxels
    logits[0, 0, 0, 0] = 5.0  # one occupied voxel: still fewer than 3 -> the top 3 (it and two others)
    anchors = tiny.anchors_from_occupancy(logits, min_tokens=3)
    assert sorted(map(tuple, anchors.index[0].tolist())) == [(0, 0, 0), (1, 2, 3), (4, 5, 6)]
    many = torch.full((1, r, r, r), -1.0)
    many[0, :2, :2, :2] = 1.0  # 8 occupied >= min_tokens: exactly the occupied set
    assert tiny.anchors_from_occupancy(many, min_tokens=3).index.shape[1] == 8


def test_render_calls_the_rasterizer_per_batch_item(tiny):
    images, c2w, K = _views(b=2, v=2)
    with torch.no_grad():
        g = tiny.reconstruct(images, c2w, K, max_tokens=16)
        out = tiny.render(g, c2w, K, 24, 20)
    assert out["rgb"].shape == (2, 2, 3, 24, 20)
    assert out["alpha"].shape == (2, 2, 1, 24, 20)
    assert torch.all((out["rgb"] >= 0) & (out["rgb"] <= 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compat", [False, True])
def test_tiny_on_cuda_matches_cpu(compat):
    torch.manual_seed(0)
    model = GeoLRM(get_config("tiny", input_size=SIZE, compat=compat)).eval()
    images, c2w, K = _views(v=2)
    r = model.cfg.grid_res
    occ = torch.zeros(1, r, r, r, dtype=torch.bool)
    occ[0, 8:12, 9:13, 10:14] = True
    with torch.no_grad():
        cpu_logits = model.propose(images, c2w, K)
        cpu = model.reconstruct(images, c2w, K, anchors=model.anchors_from_occupancy(occ, max_tokens=128))
        model.cuda()
        dev = [t.cuda() for t in (images, c2w, K)]
        gpu_logits = model.propose(*dev)
        gpu = model.reconstruct(*dev, anchors=model.anchors_from_occupancy(occ.cuda(), max_tokens=128))
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, rtol=0, atol=1e-3)
    torch.testing.assert_close(gpu.means.cpu(), cpu.means, rtol=0, atol=1e-3)
    torch.testing.assert_close(gpu.colors.cpu(), cpu.colors, rtol=0, atol=1e-3)
