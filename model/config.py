"""GeoLRM model configuration: one dataclass, three named presets (``paper``, ``small``, ``tiny``).

Conventions shared by the whole model (see also docs/ARCHITECTURE.md):

- World frame: the normalised object frame, Z-up, object inside [-0.5, 0.5]^3.
- Cameras: ``c2w`` 4x4 camera-to-world, OpenGL axes (right, up, backward); intrinsics
  normalised ``K = [[fx/W, 0, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``.
- Occupancy grid: ``grid_res``^3 voxels over [-0.5, 0.5]^3, index (X, Y, Z) with X slowest.

``compat`` selects between the paper's maths (our models, default) and the official code's
quirks (on for the official checkpoint; see :mod:`geolrm_bench.model.checkpoint` and GEOLRM.md section 5):

=========================  =====================================  ==========================================
item                       compat=False (paper maths)             compat=True (official code)
=========================  =====================================  ==========================================
self-attention             token attention (SDPA) with RoPE-3D    fp32 head-mixing H x H softmax per token,
                                                                  then the ``transpose(1,2).view`` scramble
                                                                  (RoPE cancels there, so it is skipped)
cross-attention residual   ``h + CA(norm(h))``                    ``norm(h) + CA(norm(h))``
proposal token anchors     16^3 block centres                     ``-0.5 + i/15`` (linspace(-1, 1, 16) / 2)
reconstruction anchors     voxel centres ``(X + 0.5)/R - 0.5``    grid vertices ``-0.5 + X/127``
token cap                  seeded subsample, sorted, no padding   ``randperm`` subsample (injectable) when
                                                                  N >= cap, else zero-xyz padding to the cap
DINO position embeddings   transformers 5: ``size=(n, n)``        transformers 4.34.1: ``scale_factor=
                                                                  (n + 0.1)/37``
Plücker rays / projection  full K (fx, fy, cx, cy)                fx*W on both axes, centred principal point;
                                                                  projection ``u = 1 - u``
=========================  =====================================  ==========================================
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from geolrm_bench.errors import BenchError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def dino_config_values(name: str = "dinov2_base") -> dict[str, Any]:
    """Dinov2Config keyword values stored in ``model/configs/<name>.json`` (never from the hub)."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise BenchError(f"no DINOv2 config named {name!r} (looked for {path})")
    values = json.loads(path.read_text())
    return {k: v for k, v in values.items() if not k.startswith("_")}


@dataclass
class TransformerConfig:
    """One geometry-aware transformer (proposal or reconstruction network)."""

    dim: int = 384  # token width (channels 0..2 of the input token are raw xyz)
    layers: int = 6  # number of blocks
    heads: int = 16  # attention heads (self and deformable cross-attention); head_dim = dim / heads
    ffn_hidden: int = 1024  # SwiGLU hidden size (w1, w3: dim -> ffn_hidden; w2: ffn_hidden -> dim)
    points: int = 8  # deformable sampling points per head and level (0: one sample at the reference point)


@dataclass
class ModelConfig:
    """Every size and switch of a GeoLRM network pair (proposal + reconstruction)."""

    name: str = "paper"  # preset name, recorded in saved configs
    input_size: int = 448  # images are resized (bilinear, antialias) to this square size when they differ
    dino: dict = field(default_factory=lambda: dino_config_values("dinov2_base"))  # Dinov2Config kwargs
    feat_dim: int = 384  # channels of both encoder feature levels (deconv / low-level conv outputs)
    proposal: TransformerConfig = field(default_factory=lambda: TransformerConfig(384, 6, 16, 1024, 8))
    reconstruction: TransformerConfig = field(default_factory=lambda: TransformerConfig(768, 16, 16, 2048, 8))
    grid_res: int = 128  # occupancy grid resolution R (logits are [B, R, R, R])
    token_res: int = 16  # proposal tokens per axis (dense token_res^3 grid); grid_res % token_res == 0
    max_tokens: int = 8192  # reconstruction token cap (official default at inference; 4096 in training)
    min_tokens: int = 64  # paper maths: fewer occupied voxels than this -> the top-min_tokens logits
    gs_per_token: int = 32  # Gaussians decoded from each reconstruction token
    decoder_hidden: int = 448  # hidden width of the Gaussian decoder MLP (official: 448)
    offset_max: float = 0.2  # centre = anchor + sigmoid(raw) * offset_max (world units, > 0)
    scale_max: float = 0.02  # Gaussian scale = sigmoid(raw) * scale_max (world units, linear)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE-3D base
    use_plucker: bool = True  # ablation: low-level conv input = RGB + Plücker (9 ch) or RGB only (3 ch)
    use_low_level: bool = True  # ablation: keep feature level 0 (stride-4 conv)
    use_high_level: bool = True  # ablation: keep feature level 1 (DINOv2 + deconv)
    use_rope: bool = True  # ablation: 3D RoPE in the self-attention (paper maths only)
    compat: bool = False  # reproduce the official code's quirks (see the module docstring)

    def __post_init__(self) -> None:
        if isinstance(self.proposal, dict):
            self.proposal = TransformerConfig(**self.proposal)
        if isinstance(self.reconstruction, dict):
            self.reconstruction = TransformerConfig(**self.reconstruction)
        if not (self.use_low_level or self.use_high_level):
            raise BenchError(f"model config {self.name!r}: at least one feature level must be on")
        if self.grid_res % self.token_res:
            raise BenchError(f"model config {self.name!r}: grid_res {self.grid_res} is not a multiple of "
                             f"token_res {self.token_res}")
        for part in (self.proposal, self.reconstruction):
            if part.dim % part.heads:
                raise BenchError(f"model config {self.name!r}: dim {part.dim} not divisible by "
                                 f"heads {part.heads}")
            if self.use_rope and (part.dim // part.heads) % 6:
                raise BenchError(f"model config {self.name!r}: head dim {part.dim // part.heads} must be a "
                                 "multiple of 6 for RoPE-3D (three axes, rotate-half pairs)")
            if part.points < 0:
                raise BenchError(f"model config {self.name!r}: negative number of deformable points")

    @property
    def levels(self) -> int:
        """Number of feature levels seen by the deformable attention (1 or 2)."""
        return int(self.use_low_level) + int(self.use_high_level)

    @property
    def upsample_factor(self) -> int:
        """Sub-voxels per proposal token along each axis (128 / 16 = 8)."""
        return self.grid_res // self.token_res

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BenchError(f"model config has unknown fields {unknown}")
        return cls(**copy.deepcopy(values))

    def replace(self, **changes: Any) -> ModelConfig:
        return replace(copy.deepcopy(self), **changes)


def _paper() -> ModelConfig:
    """Exactly the official shapes (configs/geolrm.yaml): 334,556,304 checkpoint values."""
    return ModelConfig(name="paper")


def _small() -> ModelConfig:
    """The 12-layer ablation model of the paper's Tables 4/5, at 224 px."""
    return ModelConfig(
        name="small",
        input_size=224,
        reconstruction=TransformerConfig(768, 12, 16, 2048, 8),
        max_tokens=4096,
    )


def _tiny() -> ModelConfig:
    """About 2 million parameters: about a second per forward pass on 2 CPU cores at 56-112 px
    (tests, CI, smoke runs). DINOv2 shrunk to width 96, 2 layers; grid 32^3, 8^3 proposal tokens."""
    dino = dino_config_values("dinov2_base")
    dino.update(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=224)
    return ModelConfig(
        name="tiny",
        input_size=112,
        dino=dino,
        feat_dim=48,
        proposal=TransformerConfig(96, 2, 4, 192, 4),
        reconstruction=TransformerConfig(192, 2, 4, 512, 4),
        grid_res=32,
        token_res=8,
        max_tokens=1024,
        gs_per_token=4,
        decoder_hidden=56,
    )


PRESETS = {"paper": _paper, "small": _small, "tiny": _tiny}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A fresh preset config (``paper``, ``small``, ``tiny``), with optional field overrides."""
    if name not in PRESETS:
        raise BenchError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg
