"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3), for LPIPS-VGG on the CPU.

A 3x3 convolution (stride 1, padding 1) computes each 4x4 block of outputs from the 6x6 block
of inputs around it. Winograd's transform (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", CVPR 2016) turns that into 36 elementwise products per (input, output)
channel pair instead of 144 multiply-adds: with the tiles of all pixels batched, the work is 36
matrix products ``[tiles, C_in] @ [C_in, C_out]``, 4x fewer multiply-adds than the direct
convolution, plus two small linear transforms of the tiles (input ``B^T d B``, output
``A^T m A``) and one of the weights (``G g G^T``, done once).

The result is the same convolution up to float32 rounding: the transforms' coefficients (up
to 8 and 1/24) make the error grow to a few 1e-6 of the output's largest magnitude (3e-6 at 8
channels, 8.5e-6 at 512), against about 3e-7 for the direct float32 one, both measured against a
float64 convolution; LPIPS distances move by < 1e-7 (the tests check both). It pays only
where the channel counts are large enough for the matrix products to dominate the transforms'
memory traffic. Timed layer by layer (VGG-16's shapes, 4 images at 512 px, best of 5, 2 cores):
against oneDNN's direct channels-last convolution it took 2.4x as long at 64 input channels and
1.2-1.7x at 128, but 0.6-0.8x at 256 and 0.5-0.6x at 512; hence :data:`MIN_CHANNELS` (see
:func:`winograd_trunk`). ``make bench`` times the whole LPIPS with and without it.

Tensors are NCHW in shape; inputs and outputs are channels-last in memory (NHWC), the CPU
layout the LPIPS trunk runs in.
"""

from __future__ import annotations

import torch
from torch import Tensor

# F(4x4, 3x3) with interpolation points 0, +-1, +-2 and infinity (Lavin & Gray's matrices).
_BT = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))

MIN_CHANNELS = 256  # input channels from which Winograd was faster, layer by layer (module docstring)
_CHUNK_BYTES = 8 << 20  # one chunk's transformed tiles (36 x tiles x channels floats) ~ the L3 share


def transform_weight(weight: Tensor) -> Tensor:
    """``G g G^T`` of each ``[3, 3]`` kernel of ``weight`` ``[C_out, C_in, 3, 3]``, computed in
    float64: ``[36, C_in, C_out]`` float32 (the 6x6 positions flattened, row-major)."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd: expected [C_out, C_in, 3, 3] weights, got {tuple(weight.shape)}")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ap,kcpq,bq->abck", g, weight.detach().double(), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


class WinogradConv2d(torch.nn.Module):
    """A frozen ``Conv2d(C_in, C_out, 3, stride=1, padding=1)`` computed by F(4x4, 3x3).

    Inference only (no autograd through the transformed weights). ``forward``: ``[B, C_in, H, W]``
    -> ``[B, C_out, H, W]`` channels-last, any ``H``, ``W`` (the last row and column of tiles are
    zero-padded and cropped).
    """

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        if not is_winograd_compatible(conv):
            raise ValueError(f"winograd: needs a 3x3 convolution, stride 1, padding 1, no groups: {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.register_buffer("u", transform_weight(conv.weight))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.float().clone())
        dev = conv.weight.device
        self.register_buffer("kb", torch.kron(torch.tensor(_BT, dtype=torch.float64),
                                              torch.tensor(_BT, dtype=torch.float64)).float().to(dev))
        self.register_buffer("ka", torch.kron(torch.tensor(_AT, dtype=torch.float64),
                                              torch.tensor(_AT, dtype=torch.float64)).float().to(dev))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), F(4x4, 3x3)"

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"winograd: expected {self.in_channels} input channels, got {c}")
        k = self.out_channels
        th, tw = -(-h // 4), -(-w // 4)  # tiles per column / row
        # NHWC, zero border of 1 (the convolution's padding) + up to 3 to fill the last tiles
        xp = torch.nn.functional.pad(x.permute(0, 2, 3, 1).float(),
                                     (0, 0, 1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))
        s_b, s_h, s_w, s_c = xp.stride()
        out = torch.empty(b, 4 * th, 4 * tw, k, dtype=torch.float32, device=x.device)
        band = max(1, min(th, _CHUNK_BYTES // (36 * 4 * max(c, k) * tw)))  # tile rows per chunk
        for n in range(b):
            for i0 in range(0, th, band):
                rows = min(band, th - i0)
                t = rows * tw
                # [6, 6, rows, tw, C]: the overlapping 6x6 input blocks (stride 4), a strided view
                d = xp.as_strided((6, 6, rows, tw, c), (s_h, s_w, 4 * s_h, 4 * s_w, s_c),
                                  xp.storage_offset() + n * s_b + 4 * i0 * s_h)
                v = (self.kb @ d.reshape(36, t * c)).view(36, t, c)  # B^T d B, all tiles at once
                m = torch.bmm(v, self.u)  # [36, t, K]: the 36 elementwise products, summed over C
                y = (self.ka @ m.view(36, t * k)).view(4, 4, rows, tw, k)  # A^T m A
                out[n, 4 * i0:4 * (i0 + rows)].view(rows, 4, tw, 4, k).copy_(y.permute(2, 0, 3, 1, 4))
        out = out[:, :h, :w]
        out += self.bias
        return out.permute(0, 3, 1, 2)


def is_winograd_compatible(m: torch.nn.Module) -> bool:
    """True for a ``Conv2d`` with a 3x3 kernel, stride 1, padding 1, dilation 1, one group."""
    return (isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (3, 3) and tuple(m.stride) == (1, 1)
            and tuple(m.padding) == (1, 1) and tuple(m.dilation) == (1, 1) and m.groups == 1
            and m.padding_mode == "zeros")


def winograd_trunk(trunk: torch.nn.Module, min_channels: int = MIN_CHANNELS) -> int:
    """Replace, in place, every compatible ``Conv2d`` of ``trunk`` with at least ``min_channels``
    input channels by a :class:`WinogradConv2d` of the same weights. Returns how many."""
    swapped = 0
    for parent in list(trunk.modules()):
        for name, child in list(parent.named_children()):
            if is_winograd_compatible(child) and child.in_channels >= min_channels:
                setattr(parent, name, WinogradConv2d(child))
                swapped += 1
    return swapped
