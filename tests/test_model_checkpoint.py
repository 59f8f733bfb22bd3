"""The official checkpoint layout and our loaders: exact names/shapes, loud failures, DINO renames."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from geolrm_bench.cameras import orbit_c2w
from geolrm_bench.errors import BenchError
from geolrm_bench.model.checkpoint import (
    build_empty,
    dino_key_map,
    from_pretrained,
    load_into,
    load_official,
    match_state_dict,
    official_manifest,
    save_pretrained,
)
from geolrm_bench.model.config import get_config
from geolrm_bench.model.geolrm import GeoLRM

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
# GEOLRM.md section 5: 920 tensors, 334,556,304 values (serializer 105,728,003 + lrm_generator
# 228,828,301) plus 12 BatchNorm buffers.
PUBLISHED_PARAMS = 334_556_304


def _is_bn_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


@pytest.fixture(scope="module")
def manifest():
    return official_manifest()


@pytest.fixture(scope="module")
def paper_meta():
    return build_empty(get_config("paper", compat=True))


@pytest.fixture(scope="module")
def paper_loaded():
    """One real ``paper`` model (about 1.3 GB) loaded from an official-layout state dict built
    from official_keys.tsv: small tensors random, large ones left uninitialised (fast) except
    for the probed slices."""
    g = torch.Generator().manual_seed(3)
    sd = {}
    for key, shape, dtype in official_manifest():
        if dtype == "int64":
            sd[key] = torch.tensor(5, dtype=torch.int64)
        elif torch.Size(shape).numel() < 100_000:
            sd[key] = torch.randn(shape, generator=g)
        else:
            sd[key] = torch.empty(shape)
            sd[key][..., :3] = torch.randn(sd[key][..., :3].shape, generator=g)
    probes = {k: sd[k][..., :3].clone() for k in (
        "serializer.encoder.model.encoder.layer.4.attention.attention.query.weight",
        "lrm_generator.transformer.layers.15.cross_attention.deformable_attention.sampling_offsets.bias",
        "lrm_generator.renderer.latent_decoder.2.weight",
        "serializer.upsample.weight")}
    model = load_into(build_empty(get_config("paper", compat=True)), sd)
    assert not sd, "the loader empties the state dict (memory)"
    return model, probes


def _meta_sd(manifest):
    return {k: torch.empty(shape, device="meta") for k, shape, _ in manifest}


def test_manifest_totals(manifest):
    assert len(manifest) == 920
    params = [(k, s) for k, s, _ in manifest if not _is_bn_buffer(k)]
    assert len(manifest) - len(params) == 12
    total = sum(int(torch.Size(s).numel()) for _, s in params)
    assert total == PUBLISHED_PARAMS


def test_paper_preset_has_exactly_the_manifest(paper_loaded, manifest):
    model, probes = paper_loaded
    fwd = dino_key_map()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {fwd.get(k, k) if fwd.get(k, k) in ours else k: tuple(s) for k, s, _ in manifest}
    assert set(ours) == set(expected)
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS
    assert len(list(model.parameters())) == 908
    assert all(p.device.type == "cpu" for p in model.parameters())
    sd = model.state_dict()
    for key, val in probes.items():
        key = fwd.get(key, key) if key not in sd else key
        assert torch.equal(sd[key][..., :3], val), key


def test_loader_refuses_wrong_shape_naming_key_and_shapes(paper_meta, manifest):
    sd = _meta_sd(manifest)
    key = "lrm_generator.transformer.layers.3.feed_forward.w1.weight"
    sd[key] = torch.empty(2048, 767, device="meta")
    with pytest.raises(BenchError) as err:
        match_state_dict(paper_meta, sd, "ckpt")
    msg = str(err.value)
    assert key in msg and "(2048, 767)" in msg and "(2048, 768)" in msg and "\n" not in msg


def test_loader_refuses_missing_and_unexpected_keys(paper_meta, manifest):
    sd = _meta_sd(manifest)
    del sd["serializer.upsample.bias"]
    with pytest.raises(BenchError, match=re.escape("serializer.upsample.bias")):
        match_state_dict(paper_meta, sd)
    sd = _meta_sd(manifest)
    sd["lrm_generator.extra_head.weight"] = torch.empty(3, device="meta")
    with pytest.raises(BenchError, match=re.escape("lrm_generator.extra_head.weight")):
        match_state_dict(paper_meta, sd)


def test_loader_ignores_lpips_and_accepts_tf4_or_tf5_dino_names(paper_meta, manifest):
    sd = _meta_sd(manifest)
    sd["lpips.net.lin0.model.1.weight"] = torch.empty(1, 64, 1, 1, device="meta")
    out = match_state_dict(paper_meta, sd)
    assert not any(k.startswith("lpips.") for k in out)
    assert set(out) == set(paper_meta.state_dict())
    fwd = dino_key_map()
    tf5 = {fwd.get(k, k): v for k, v in _meta_sd(manifest).items()}
    assert set(tf5) != set(_meta_sd(manifest))
    assert set(match_state_dict(paper_meta, tf5)) == set(paper_meta.state_dict())


def _views(b=1, v=3, size=56):
    c2w = torch.stack([torch.from_numpy(orbit_c2w(20.0, 360.0 * i / v, 2.0, convention="opengl")).float()
                       for i in range(v)])[None].repeat(b, 1, 1, 1)
    K = torch.tensor([[1.4, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1.0]]).repeat(b, v, 1, 1)
    images = torch.rand(b, v, 3, size, size, generator=torch.Generator().manual_seed(0))
    return images, c2w, K


def test_official_file_roundtrip_wrapper_tf4_names_and_lpips(tmp_path):
    torch.manual_seed(0)
    cfg = get_config("tiny", input_size=56)
    model = GeoLRM(cfg).eval()
    bwd = {v: k for k, v in dino_key_map().items()}
    sd = {bwd.get(k, k): v.clone() for k, v in model.state_dict().items()}
    assert any(".attention.attention.query." in k for k in sd)  # transformers-4 names on disk
    sd["lpips.net.lin0.model.1.weight"] = torch.ones(1, 64, 1, 1)
    path = tmp_path / "geolrm.ckpt"
    torch.save({"state_dict": sd}, path)
    loaded = load_official(path, config=cfg, compat=False)
    images, c2w, K = _views()
    with torch.no_grad():
        a = model.reconstruct(images, c2w, K, max_tokens=64)
        b = loaded.reconstruct(images, c2w, K, max_tokens=64)
    torch.testing.assert_close(b.means, a.means, rtol=0, atol=0)
    torch.testing.assert_close(b.colors, a.colors, rtol=0, atol=0)
    # a raw state dict (no wrapper) loads too; a wrong preset is refused with a key name
    torch.save(model.state_dict(), path)
    load_official(path, config=cfg, compat=False)
    with pytest.raises(BenchError, match="lrm_generator"):
        load_official(path, config=get_config("tiny", decoder_hidden=64), compat=False)


def test_official_loader_rejects_non_state_dicts(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="bad.ckpt"):
        load_official(path, config="tiny")
    torch.save({"a": 1}, path)
    with pytest.raises(BenchError, match="not a state_dict"):
        load_official(path, config="tiny")
    with pytest.raises(BenchError, match="not found"):
        load_official(tmp_path / "missing.ckpt")


def test_save_and_from_pretrained_roundtrip(tmp_path):
    torch.manual_seed(1)
    cfg = get_config("tiny", input_size=56, use_rope=False)
    model = GeoLRM(cfg).eval()
    save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.cfg == cfg
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(BenchError, match="model.safetensors"):
        from_pretrained(tmp_path / "m")
