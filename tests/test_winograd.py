"""Winograd F(4x4, 3x3) convolution against a float64 direct convolution (the independent
reference), on sizes that are and are not multiples of the 4x4 output tile."""

from __future__ import annotations

import pytest
import torch

from geolrm_bench.metrics.winograd import WinogradConv2d, is_winograd_compatible, winograd_trunk


@pytest.mark.parametrize("c_in, c_out, h, w, batch",
                         [(8, 5, 12, 16, 1), (16, 32, 13, 10, 3), (3, 4, 1, 6, 2)])
def test_matches_float64_convolution(c_in, c_out, h, w, batch):
    g = torch.Generator().manual_seed(c_in * 100 + h)
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1).requires_grad_(False)
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (3 * c_in ** 0.5))
    conv.bias.copy_(torch.randn(c_out, generator=g))
    x = torch.randn(batch, c_in, h, w, generator=g)
    ref = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    for layout in (torch.contiguous_format, torch.channels_last):
        y = WinogradConv2d(conv)(x.contiguous(memory_format=layout))
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert y.is_contiguous(memory_format=torch.channels_last) or h % 4 or w % 4
        err = (y.double() - ref).abs().max() / ref.abs().max()
        # the transforms' rounding: float32 with coefficients up to 8 and 1/24, ~1e-6 here, about
        # 1e-5 at VGG's 512 channels (the direct float32 convolution: ~1e-7 .. 1e-6)
        assert err < 2e-5, err


def test_chunks_cover_every_tile(monkeypatch):
    # a chunk budget of one tile row: every row of tiles is its own chunk
    import geolrm_bench.metrics.winograd as wmod

    monkeypatch.setattr(wmod, "_CHUNK_BYTES", 1)
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False).requires_grad_(False)
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    x = torch.randn(2, 4, 17, 9, generator=g)
    ref = torch.nn.functional.conv2d(x.double(), conv.weight.double(), padding=1)
    y = WinogradConv2d(conv)(x)
    assert ((y.double() - ref).abs().max() / ref.abs().max()) < 2e-5


def test_only_plain_3x3_convolutions_are_swapped():
    assert is_winograd_compatible(torch.nn.Conv2d(4, 4, 3, padding=1))
    for bad in (torch.nn.Conv2d(4, 4, 3, padding=0), torch.nn.Conv2d(4, 4, 3, padding=1, stride=2),
                torch.nn.Conv2d(4, 4, 5, padding=2), torch.nn.Conv2d(4, 4, 3, padding=1, groups=2),
                torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2), torch.nn.Linear(4, 4)):
        assert not is_winograd_compatible(bad)
    with pytest.raises(ValueError, match="3x3"):
        WinogradConv2d(torch.nn.Conv2d(4, 4, 5, padding=2))
    inner = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), inner)
    assert winograd_trunk(net, min_channels=8) == 1  # the nested 8 -> 8 one; not the 3-channel or 1x1
    assert isinstance(net[2][0], WinogradConv2d) and isinstance(net[0], torch.nn.Conv2d)
