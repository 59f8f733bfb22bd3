"""``TrainConfig``: every value of the official recipe as a documented default, deviations as options.

Defaults that differ between the stages are ``None`` here and resolved by ``__post_init__`` from
:data:`STAGE_DEFAULTS` (TRAINING.md section 1): stage 1 ``proposal`` (``srl-bf16.yaml``), stage 2
``reconstruction`` (``geolrm-train.yaml``). Schedule lengths are counted in OPTIMIZER UPDATES (see
:mod:`geolrm_bench.training.schedule`: the official stage-2 12,000 / 100,000 micro-steps with
accumulation 8 are 1,500 / 12,500 updates).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from geolrm_bench.errors import BenchError

STAGES = ("proposal", "reconstruction")
PRECISIONS = ("fp32", "bf16")
TOKEN_SOURCES = ("predicted", "gt")

#: Official per-stage values (TRAINING.md 1, table).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "proposal": dict(batch_size=2, accumulate=1, lr=2e-4, warmup=500, total_steps=50_000, grad_clip=10.0),
    "reconstruction": dict(batch_size=1, accumulate=8, lr=1e-4, warmup=1_500, total_steps=12_500,
                           grad_clip=4.0),
}
OFFICIAL_TRAIN_TOKENS = 4096  # stage-2 token cap in training (yaml:27)


@dataclass
class TrainConfig:
    """One training run of one stage (``geolrm-bench train``; see docs/ARCHITECTURE.md)."""

    stage: str = "proposal"  # "proposal" (stage 1) or "reconstruction" (stage 2)
    data: Path = Path("out/occupancy-gt")  # folder written by `geolrm-bench occupancy-gt`
    out: Path = Path("out/train/run")  # run folder: checkpoints, metrics.csv, final model
    preset: str = "tiny"  # model preset (paper, small, tiny); ignored when --init is a full model
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"input_size": 56}
    init: str | None = None  # official geolrm.ckpt or one of our runs: start from these weights
    proposal: str | None = None  # stage 2: frozen proposal network from a run or the official ckpt
    # ---- optimisation (None = the stage's official value, STAGE_DEFAULTS)
    steps: int | None = None  # optimizer updates of this run (default: total_steps)
    batch_size: int | None = None  # objects per micro-batch per worker (official 2 / 1)
    accumulate: int | None = None  # micro-batches per update (official 1 / 8)
    lr: float | None = None  # AdamW base LR (official 2e-4 / 1e-4; not scaled by batch or workers)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (official)
    weight_decay: float = 0.05  # AdamW weight decay, on every parameter (official: no param groups)
    warmup: int | None = None  # warmup updates (official 500 / 1,500)
    total_steps: int | None = None  # cosine T_max in updates (official 50,000 / 12,500)
    eta_min: float = 0.001  # LR floor factor of the schedule (official)
    grad_clip: float | None = None  # global L2 gradient clip (official 10 / 4)
    precision: str = "fp32"  # "fp32" (official, both stages) or "bf16" (autocast; paper says stage 1)
    seed: int = 42  # official seed; data order and every per-step draw derive from it
    # ---- views and images
    fixed_input_views: int | None = None  # Table 4 ablation: always N inputs (default: 1-7 / 1-8 random)
    render_size: int | None = None  # supervision resolution, px (default: the model's input_size)
    random_background: bool = True  # targets on one random colour per micro-batch (official); else white
    # ---- stage 2
    train_max_tokens: int | None = None  # token cap in training (default min(4096, preset max_tokens))
    tokens: str = "predicted"  # "predicted" (official: proposal logit > 0) or "gt" (occupancy GT voxels)
    min_tokens: int = 64  # if the proposal predicts fewer occupied voxels, take its top-`min_tokens`
    proposal_train_mode: bool = False  # official quirk: frozen proposal's BatchNorm in train mode
    # ---- loss weights (official)
    w_bce: float = 1.0
    w_geo: float = 1.0
    w_mse: float = 1.0
    w_lpips: float = 2.0
    w_mask: float = 1.0
    w_depth: float = 0.2
    w_tv: float = 0.05
    lpips_net: str = "vgg"  # LPIPS backbone of the loss (official: VGG)
    # ---- deviations for tests / small machines
    freeze_bn: bool = False  # BatchNorm of the trained network in eval mode (running stats, no batch stats)
    # ---- engineering
    num_workers: int = 1  # DDP workers (Ray Train)
    use_gpu: bool = False  # one GPU per worker, NCCL; else CPU and gloo
    address: str | None = None  # existing Ray cluster address
    threads_per_worker: int | None = None  # torch intra-op threads per worker (default: cpus / workers)
    checkpoint_every: int = 50  # updates between checkpoints (official 2,000 / 1,000)
    keep_checkpoints: int = 2  # newest checkpoints kept
    val_every: int = 50  # updates between validations (0 = never)
    val_objects: int = 2  # held-out objects (last ones by name) when the data has more than that
    plot_every: int = 10  # updates between redraws of curves.png
    max_failures: int = 2  # Ray FailureConfig: worker-group restarts from the last checkpoint
    progress: bool = True  # tqdm bar on rank 0
    prefetch: bool = True  # load the next update's views in a thread while this one trains
    crash_at_step: int | None = None  # tests only: os._exit(137) after this update (simulated kill -9)

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        if self.stage not in STAGES:
            raise BenchError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.steps is None:
            self.steps = self.total_steps
        self.betas = tuple(float(b) for b in self.betas)
        if self.precision not in PRECISIONS:
            raise BenchError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.tokens not in TOKEN_SOURCES:
            raise BenchError(f"tokens must be one of {', '.join(TOKEN_SOURCES)}, got {self.tokens!r}")
        positive = {"steps": self.steps, "batch_size": self.batch_size, "accumulate": self.accumulate,
                    "total_steps": self.total_steps, "num_workers": self.num_workers,
                    "checkpoint_every": self.checkpoint_every, "keep_checkpoints": self.keep_checkpoints,
                    "plot_every": self.plot_every, "min_tokens": self.min_tokens}
        for name, v in positive.items():
            if int(v) < 1:
                raise BenchError(f"{name} must be >= 1, got {v}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise BenchError(f"lr and grad_clip must be > 0, got {self.lr} and {self.grad_clip}")
        if self.warmup < 0 or self.warmup >= self.total_steps:
            raise BenchError(f"warmup must be in [0, total_steps), got {self.warmup} "
                             f"(total {self.total_steps})")
        if not 0 <= self.eta_min <= 1:
            raise BenchError(f"eta_min must be in [0, 1], got {self.eta_min}")
        if self.fixed_input_views is not None and not 1 <= self.fixed_input_views <= 8:
            raise BenchError(f"--fixed-input-views must be 1..8, got {self.fixed_input_views}")
        if self.render_size is not None and self.render_size < 8:
            raise BenchError(f"render_size must be >= 8 px, got {self.render_size}")
        if self.stage == "proposal" and self.proposal is not None:
            raise BenchError("--proposal is for --stage reconstruction (stage 1 trains the proposal itself)")
        if any(w < 0 for w in self.loss_weights().values()):
            raise BenchError("loss weights must be >= 0")
        if self.val_every < 0 or self.val_objects < 0:
            raise BenchError("val_every and val_objects must be >= 0")

    def loss_weights(self) -> dict[str, float]:
        """Weights keyed like the loss terms (``bce``, ``geo``, ``mse``, ``lpips``, ...)."""
        return {k[2:]: float(getattr(self, k)) for k in
                ("w_bce", "w_geo", "w_mse", "w_lpips", "w_mask", "w_depth", "w_tv")}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BenchError(f"train config has unknown fields {unknown} (known: {', '.join(sorted(known))})")
        return cls(**copy.deepcopy(values))


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value) with the value parsed as JSON when possible (``3``, ``true``,
    ``null``, ``[0.9, 0.99]``), else kept as a string. ``model.KEY=V`` sets a model override."""
    import json

    if "=" not in text:
        raise BenchError(f"--config expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Fold ``--config key=value`` strings into a dict of TrainConfig fields (unknown keys error later)."""
    out = copy.deepcopy(values)
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("model."):
            out.setdefault("model_overrides", {})[key[len("model."):]] = value
        else:
            out[key] = value
    return out
