"""The Gaussians bundle shared by the decoder, the rasterizers, .ply I/O and metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from geolrm_bench.errors import BenchError


@dataclass
class Gaussians:
    """A set of 3D Gaussians with *activated* parameters, in the model's world frame.

    World frame: the normalised object frame, Z-up, object inside [-0.5, 0.5]^3.
    Leading batch dimensions ``...`` are shared by every field (``[N]`` or ``[B, N]``).

    Attributes:
        means: ``[..., N, 3]`` centres in world units.
        opacities: ``[..., N]`` opacity in (0, 1).
        scales: ``[..., N, 3]`` standard deviations along the local axes, world units (> 0).
        quats: ``[..., N, 4]`` unit quaternions, order (w, x, y, z).
        colors: ``[..., N, 3]`` RGB in [0, 1] (no spherical harmonics).
    """

    means: Tensor  # [..., N, 3]
    opacities: Tensor  # [..., N]
    scales: Tensor  # [..., N, 3]
    quats: Tensor  # [..., N, 4]
    colors: Tensor  # [..., N, 3]

    def __post_init__(self) -> None:
        lead = self.means.shape[:-1]
        expect = {
            "means": (self.means, (*lead, 3)),
            "opacities": (self.opacities, tuple(lead)),
            "scales": (self.scales, (*lead, 3)),
            "quats": (self.quats, (*lead, 4)),
            "colors": (self.colors, (*lead, 3)),
        }
        for name, (t, shape) in expect.items():
            if tuple(t.shape) != tuple(shape):
                raise BenchError(f"Gaussians.{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")

    def __len__(self) -> int:
        return int(self.means.shape[-2])

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[-2])

    def to(self, *args, **kwargs) -> Gaussians:
        return Gaussians(**{k: v.to(*args, **kwargs) for k, v in self.as_dict().items()})

    def detach(self) -> Gaussians:
        return Gaussians(**{k: v.detach() for k, v in self.as_dict().items()})

    def as_dict(self) -> dict[str, Tensor]:
        return {
            "means": self.means,
            "opacities": self.opacities,
            "scales": self.scales,
            "quats": self.quats,
            "colors": self.colors,
        }

    def __getitem__(self, index) -> Gaussians:
        """Index the leading batch dimension (e.g. ``g[0]`` takes batch item 0 of ``[B, N]``)."""
        return Gaussians(**{k: v[index] for k, v in self.as_dict().items()})

    def select(self, mask_or_index: Tensor) -> Gaussians:
        """Keep Gaussians along the N axis of an unbatched set (``[N]`` bool mask or indices)."""
        if self.means.dim() != 2:
            raise BenchError("select() needs an unbatched Gaussians ([N, ...] fields)")
        return Gaussians(**{k: v[mask_or_index] for k, v in self.as_dict().items()})

    @staticmethod
    def cat(items: list[Gaussians]) -> Gaussians:
        """Concatenate unbatched sets along N."""
        return Gaussians(**{k: torch.cat([g.as_dict()[k] for g in items], dim=0)
                            for k in ("means", "opacities", "scales", "quats", "colors")})


def shell_gaussians(n: int, seed: int = 0, scale: tuple[float, float] = (0.003, 0.015)) -> Gaussians:
    """``n`` Gaussians near a sphere shell of radius 0.35 (object-like density), opacity 0.3..1, CPU:
    synthetic Gaussians for benchmarks and rasterizer checks."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=gen)
    means = 0.35 * d / d.norm(dim=1, keepdim=True) + 0.01 * torch.randn(n, 3, generator=gen)
    return Gaussians(means=means, opacities=0.3 + 0.7 * torch.rand(n, generator=gen),
                     scales=scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=gen),
                     quats=torch.randn(n, 4, generator=gen), colors=torch.rand(n, 3, generator=gen))
