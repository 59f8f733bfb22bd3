"""GeoLRM: proposal network (occupancy) + reconstruction network (Gaussians) in one module.

State-dict names equal the official checkpoint's (``serializer.*`` = proposal network,
``lrm_generator.*`` = reconstruction network; DINOv2 names as in the installed transformers).

Inputs everywhere:
- ``images`` ``[B, V, 3, H, W]`` float in [0, 1], composited on white;
- ``c2w`` ``[B, V, 4, 4]`` camera-to-world, OpenGL axes (right, up, backward);
- ``K`` ``[B, V, 3, 3]`` normalised intrinsics (fx/W, fy/H, cx/W, cy/H).
World frame: normalised object frame, Z-up, object in [-0.5, 0.5]^3. Occupancy grid: R^3
voxels, index (X, Y, Z), X slowest. See :mod:`geolrm_bench.model.config` for the two modes (``compat``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geolrm_bench.errors import BenchError
from geolrm_bench.model.config import ModelConfig, get_config
from geolrm_bench.model.encoder import ImageEncoder
from geolrm_bench.model.gaussians import Gaussians
from geolrm_bench.model.transformer import GeoTransformer


@dataclass
class Anchors:
    """Reconstruction tokens.

    Attributes:
        xyz: ``[B, N, 3]`` anchor positions, world units.
        index: ``[B, N, 3]`` long voxel indices (X, Y, Z) on the R^3 grid (RoPE positions).
        mask: ``[B, N]`` bool, True for real tokens. False marks padding: in compat mode the
            official zero-xyz padding (kept, decoded and rendered like real tokens); in paper
            mode batch padding (ignored by attention, decoded with opacity 0).
    """

    xyz: Tensor  # [B, N, 3]
    index: Tensor  # [B, N, 3]
    mask: Tensor  # [B, N]


def occupied_or_top(logits: Tensor, min_tokens: int) -> Tensor:  # [R, R, R] logits -> [R, R, R] bool
    """Occupied voxels (logit > 0) of one object; when fewer than ``min_tokens`` are occupied, its
    ``min_tokens`` highest logits instead. An empty proposal (a weak or briefly trained proposal
    network on an unusual object) cannot be reconstructed in paper maths; the official code pads
    with zero-xyz tokens there instead (compat). Used alike in training and at inference."""
    occ = logits > 0
    if int(occ.sum()) >= min_tokens:
        return occ
    k = min(int(min_tokens), logits.numel())
    flat = torch.zeros(logits.numel(), dtype=torch.bool, device=logits.device)
    flat[logits.reshape(-1).topk(k).indices] = True
    return flat.view_as(logits)


def voxel_index(xyz: Tensor, res: int) -> Tensor:  # [..., 3] -> [..., 3] long
    """Nearest voxel index of world points for voxel CENTRES ``(X + 0.5)/R - 0.5``, clamped."""
    return torch.round((xyz.float() + 0.5) * res - 0.5).long().clamp(0, res - 1)


class ProposalNetwork(nn.Module):
    """Dense token_res^3 tokens -> transformer -> Linear(dim -> f^3) -> logits [B, R, R, R]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.proposal
        self.encoder = ImageEncoder(cfg.dino, cfg.feat_dim, cfg.use_plucker, cfg.use_low_level,
                                    cfg.use_high_level, cfg.compat)
        self.transformer = GeoTransformer(p.dim, p.layers, p.heads, p.ffn_hidden, cfg.levels, p.points,
                                          cfg.feat_dim, cfg.norm_eps, cfg.rope_theta, cfg.use_rope)
        self.upsample = nn.Linear(p.dim, cfg.upsample_factor ** 3)

    def token_grid(self, device=None) -> tuple[Tensor, Tensor]:
        """Token anchors ``[T^3, 3]`` (token t = T^2 i + T j + k, x slowest) and RoPE positions.

        compat: ``0.5 * linspace(-1, 1, T)`` per axis (= -0.5 + i/(T-1)); RoPE positions are not
        used there. Paper maths: block centres ``-0.5 + (i + 0.5)/T``, positions = the voxel
        index of that centre on the R grid.
        """
        t = self.cfg.token_res
        if self.cfg.compat:
            lin = torch.linspace(-1, 1, t, device=device) * 0.5
        else:
            lin = (torch.arange(t, device=device, dtype=torch.float32) + 0.5) / t - 0.5
        xyz = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
        return xyz, voxel_index(xyz, self.cfg.grid_res)

    def forward(self, images: Tensor, c2w: Tensor, K: Tensor, intermediates: dict | None = None,
                reference: bool = False) -> Tensor:  # [B, R, R, R] logits (> 0 = occupied)
        b = images.shape[0]
        enc: dict | None = {} if intermediates is not None else None
        value, shapes = self.encoder(images, c2w, K, enc)
        xyz, pos = self.token_grid(images.device)
        xyz = xyz[None].expand(b, -1, -1)
        pos = pos[None].expand(b, -1, -1)
        h = self.transformer(xyz, value, shapes, c2w, K, positions=pos, compat=self.cfg.compat,
                             reference=reference)
        out = self.upsample(h)  # [B, T^3, f^3]
        t, f, r = self.cfg.token_res, self.cfg.upsample_factor, self.cfg.grid_res
        logits = out.reshape(b, t, t, t, f, f, f).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, r, r, r)
        if intermediates is not None:
            intermediates.update({f"ser_{k}": v for k, v in enc.items()})
        return logits


class GaussianDecoder(nn.Module):
    """``latent_decoder`` = Linear(dim -> hidden), SiLU, Linear(hidden -> G * 14).

    Per Gaussian (g-major: Gaussian k of a token uses outputs [14k, 14k + 14)):
    ``[xyz offset(3), opacity(1), scale(3), quaternion wxyz(4), rgb(3)]`` activated as
    position = anchor + sigmoid * offset_max (positive offsets only), opacity = sigmoid,
    scale = sigmoid * scale_max, rotation = L2-normalised quaternion, colour = clamp(x, -0.5, 0.5) + 0.5.
    """

    def __init__(self, dim: int, hidden: int, gs_per_token: int, offset_max: float, scale_max: float):
        super().__init__()
        self.gs_per_token, self.offset_max, self.scale_max = gs_per_token, offset_max, scale_max
        self.latent_decoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(),
                                            nn.Linear(hidden, gs_per_token * 14))

    def forward(self, anchors: Tensor, latents: Tensor, mask: Tensor | None = None) -> Gaussians:
        """anchors ``[B, N, 3]``, latents ``[B, N, dim]``, mask ``[B, N]`` (False -> opacity 0)
        -> Gaussians with fields ``[B, N * G, ...]`` (token-major)."""
        b, n, _ = latents.shape
        g = self.gs_per_token
        raw = self.latent_decoder(latents).reshape(b, n, g, 14)
        means = anchors[:, :, None, :].to(raw.dtype) + torch.sigmoid(raw[..., 0:3]) * self.offset_max
        opac = torch.sigmoid(raw[..., 3])
        if mask is not None:
            opac = opac * mask[:, :, None].to(opac.dtype)
        scales = torch.sigmoid(raw[..., 4:7]) * self.scale_max
        quats = F.normalize(raw[..., 7:11], dim=-1)
        colors = raw[..., 11:14].clamp(-0.5, 0.5) + 0.5
        return Gaussians(means=means.reshape(b, n * g, 3), opacities=opac.reshape(b, n * g),
                         scales=scales.reshape(b, n * g, 3), quats=quats.reshape(b, n * g, 4),
                         colors=colors.reshape(b, n * g, 3))


class ReconstructionNetwork(nn.Module):
    """Anchor tokens -> transformer latents -> Gaussians (``encoder``, ``transformer``, ``renderer``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        r = cfg.reconstruction
        self.encoder = ImageEncoder(cfg.dino, cfg.feat_dim, cfg.use_plucker, cfg.use_low_level,
                                    cfg.use_high_level, cfg.compat)
        self.transformer = GeoTransformer(r.dim, r.layers, r.heads, r.ffn_hidden, cfg.levels, r.points,
                                          cfg.feat_dim, cfg.norm_eps, cfg.rope_theta, cfg.use_rope)
        self.renderer = GaussianDecoder(r.dim, cfg.decoder_hidden, cfg.gs_per_token, cfg.offset_max,
                                        cfg.scale_max)

    def forward_latents(self, anchors: Anchors, images: Tensor, c2w: Tensor, K: Tensor,
                        intermediates: dict | None = None, reference: bool = False) -> Tensor:  # [B, N, dim]
        enc: dict | None = {} if intermediates is not None else None
        value, shapes = self.encoder(images, c2w, K, enc)
        key_mask = None
        if not self.cfg.compat and not bool(anchors.mask.all()):
            key_mask = anchors.mask
        latents = self.transformer(anchors.xyz, value, shapes, c2w, K, positions=anchors.index,
                                   key_mask=key_mask, compat=self.cfg.compat, reference=reference,
                                   intermediates=intermediates)
        if intermediates is not None:
            intermediates.update({f"lrm_{k}": v for k, v in enc.items()})
        return latents


class GeoLRM(nn.Module):
    """The full model: ``GeoLRM(get_config("tiny"))``.

    Official weights: :func:`geolrm_bench.model.checkpoint.load_official`; own:
    ``save_pretrained`` / ``from_pretrained``.
    """

    def __init__(self, cfg: ModelConfig | str = "paper"):
        super().__init__()
        self.cfg = get_config(cfg) if isinstance(cfg, str) else cfg
        self.serializer = ProposalNetwork(self.cfg)
        self.lrm_generator = ReconstructionNetwork(self.cfg)

    # ----------------------------------------------------------------- helpers
    def set_compat(self, compat: bool) -> None:
        """Switch between paper maths and the official quirks (config docstring) in place."""
        self.cfg.compat = compat
        self.serializer.encoder.set_compat(compat)
        self.lrm_generator.encoder.set_compat(compat)

    def prepare_images(self, images: Tensor, resize: bool = True) -> Tensor:
        """Check shapes; resize (bilinear, antialias, clamp to [0, 1]) to ``cfg.input_size`` when
        ``resize`` and the size differs. Normalised intrinsics need no change."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise BenchError(f"GeoLRM: images must be [B, V, 3, H, W], got {tuple(images.shape)}")
        b, v, _, h, w = images.shape
        s = self.cfg.input_size
        if resize and (h, w) != (s, s):
            images = F.interpolate(images.reshape(b * v, 3, h, w).float(), size=(s, s), mode="bilinear",
                                   align_corners=False, antialias=True).clamp(0, 1).reshape(b, v, 3, s, s)
        return images

    def _check_cameras(self, images: Tensor, c2w: Tensor, K: Tensor) -> None:
        b, v = images.shape[:2]
        if tuple(c2w.shape) != (b, v, 4, 4) or tuple(K.shape) != (b, v, 3, 3):
            raise BenchError(f"GeoLRM: cameras must be c2w [B, V, 4, 4] and K [B, V, 3, 3] for images "
                             f"{tuple(images.shape)}; got {tuple(c2w.shape)} and {tuple(K.shape)}")

    # ----------------------------------------------------------------- API
    def propose(self, images: Tensor, c2w: Tensor, K: Tensor, resize: bool = True,
                intermediates: dict | None = None) -> Tensor:  # [B, R, R, R] occupancy logits
        """Occupancy logits over the R^3 grid (> 0 = occupied), fp32."""
        images = self.prepare_images(images, resize)
        self._check_cameras(images, c2w, K)
        return self.serializer(images, c2w.float(), K.float(), intermediates).float()

    def anchors_from_occupancy(
        self,
        occupancy: Tensor,  # [B, R, R, R] logits (occupied where > 0) or bool mask
        max_tokens: int | None = None,
        generator: torch.Generator | None = None,
        perm: Tensor | list[Tensor] | None = None,
        min_tokens: int | None = None,
    ) -> Anchors:
        """Occupied voxels -> reconstruction tokens (C order, X slowest).

        Paper maths with float logits: an object with fewer than ``min_tokens`` (default
        ``cfg.min_tokens``) occupied voxels takes its top-``min_tokens`` logits
        (:func:`occupied_or_top`); a bool mask with no voxel is an error.

        Paper maths: voxel centres ``(X + 0.5)/R - 0.5``; above the cap a random subset drawn from
        ``generator`` (default: seeded 0) is kept, re-sorted into C order; no padding (a batch is
        padded to its longest item with mask False).
        compat: grid vertices ``-0.5 + X/(R-1)``; when N >= cap the tokens are
        ``tokens[perm[:cap]]`` (``perm`` per batch item, else ``randperm(N, generator)``), unsorted;
        when N < cap zero-xyz tokens are appended up to the cap and kept.
        """
        cap = self.cfg.max_tokens if max_tokens is None else int(max_tokens)
        r = self.cfg.grid_res
        if occupancy.dtype == torch.bool:
            occ = occupancy
        elif self.cfg.compat:
            occ = occupancy > 0
        else:
            k = self.cfg.min_tokens if min_tokens is None else int(min_tokens)
            occ = torch.stack([occupied_or_top(o, k) for o in occupancy]) if occupancy.dim() == 4 \
                else occupancy > 0
        if occ.dim() != 4 or tuple(occ.shape[1:]) != (r, r, r):
            raise BenchError(f"occupancy must be [B, {r}, {r}, {r}], got {tuple(occ.shape)}")
        if generator is None and not self.cfg.compat:
            generator = torch.Generator().manual_seed(0)
        items = []
        for b in range(occ.shape[0]):
            idx = occ[b].nonzero()  # [N, 3] long, C order
            n = idx.shape[0]
            if self.cfg.compat:
                if n >= cap:
                    p = perm[b] if isinstance(perm, (list, tuple)) else perm
                    if p is None:
                        p = torch.randperm(n, generator=generator)
                    idx = idx[p.to(idx.device)[:cap]]
                    mask = torch.ones(cap, dtype=torch.bool, device=idx.device)
                else:
                    mask = torch.zeros(cap, dtype=torch.bool, device=idx.device)
                    mask[:n] = True
                xyz = torch.zeros(cap, 3, device=idx.device)
                xyz[: min(n, cap)] = -0.5 + idx.float() / (r - 1)
                index = voxel_index(xyz, r)
            else:
                if n == 0:
                    raise BenchError("GeoLRM: the proposal network found no occupied voxel (all logits <= 0)")
                if n > cap:
                    keep = torch.randperm(n, generator=generator)[:cap].sort().values
                    idx = idx[keep.to(idx.device)]
                xyz = (idx.float() + 0.5) / r - 0.5
                index, mask = idx, torch.ones(idx.shape[0], dtype=torch.bool, device=idx.device)
            items.append((xyz, index, mask))
        n_max = max(x.shape[0] for x, _, _ in items)

        def pad(t: Tensor) -> Tensor:
            extra = n_max - t.shape[0]
            return F.pad(t, (0, 0, 0, extra)) if t.dim() == 2 else F.pad(t, (0, extra))

        return Anchors(xyz=torch.stack([pad(x) for x, _, _ in items]),
                       index=torch.stack([pad(i) for _, i, _ in items]),
                       mask=torch.stack([pad(m) for _, _, m in items]))

    def anchors_from_xyz(self, xyz: Tensor) -> Anchors:  # [B, N, 3] -> Anchors (all real)
        return Anchors(xyz=xyz.float(), index=voxel_index(xyz, self.cfg.grid_res),
                       mask=torch.ones(xyz.shape[:2], dtype=torch.bool, device=xyz.device))

    def reconstruct(
        self,
        images: Tensor,  # [B, V, 3, H, W]
        c2w: Tensor,  # [B, V, 4, 4] OpenGL
        K: Tensor,  # [B, V, 3, 3] normalised
        anchors: Anchors | Tensor | None = None,  # Anchors or xyz [B, N, 3]; None: propose first
        max_tokens: int | None = None,
        generator: torch.Generator | None = None,
        perm: Tensor | list[Tensor] | None = None,
        resize: bool = True,
        intermediates: dict | None = None,
        reference: bool = False,
        min_tokens: int | None = None,
    ) -> Gaussians:  # fields [B, N * gs_per_token, ...]
        """Gaussians for each batch item (proposes anchors first when ``anchors`` is None).

        ``intermediates``: a dict filled with ``anchors``, ``latents``, ``ref_uv``, ``layer0`` and
        the encoder maps (``lrm_plucker``, ``lrm_low``, ``lrm_dino``, ``lrm_high``, ``ser_*``).
        ``reference=True`` runs the plain deformable-attention reference (slow; for tests).
        """
        images = self.prepare_images(images, resize)
        self._check_cameras(images, c2w, K)
        c2w, K = c2w.float(), K.float()
        if anchors is None:
            logits = self.serializer(images, c2w, K, intermediates, reference=reference)
            anchors = self.anchors_from_occupancy(logits.float(), max_tokens, generator, perm, min_tokens)
        elif isinstance(anchors, Tensor):
            anchors = self.anchors_from_xyz(anchors)
        latents = self.lrm_generator.forward_latents(anchors, images, c2w, K, intermediates, reference)
        mask = None if self.cfg.compat else anchors.mask
        gaussians = self.lrm_generator.renderer(anchors.xyz, latents, mask)
        if intermediates is not None:
            intermediates["anchors"] = anchors
            intermediates["latents"] = latents
        return gaussians

    def render(
        self,
        gaussians: Gaussians,  # fields [B, N, ...]
        c2w: Tensor,  # [B, V, 4, 4] OpenGL
        K: Tensor,  # [B, V, 3, 3] normalised
        height: int,
        width: int,
        background=(1.0, 1.0, 1.0),
        backend: str = "auto",
    ) -> dict[str, Tensor]:  # rgb [B,V,3,H,W], alpha [B,V,1,H,W], depth [B,V,1,H,W]
        """Render every batch item with :func:`geolrm_bench.model.rasterize.render_gaussians`."""
        from geolrm_bench.model.rasterize import render_gaussians

        outs = [render_gaussians(gaussians[b], c2w[b], K[b], height, width, background, backend)
                for b in range(c2w.shape[0])]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

    # ----------------------------------------------------------------- weights
    @classmethod
    def load_official(cls, path, **kwargs) -> GeoLRM:
        from geolrm_bench.model.checkpoint import load_official

        return load_official(path, **kwargs)

    def save_pretrained(self, directory) -> None:
        from geolrm_bench.model.checkpoint import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> GeoLRM:
        from geolrm_bench.model.checkpoint import from_pretrained

        return from_pretrained(directory, **kwargs)
