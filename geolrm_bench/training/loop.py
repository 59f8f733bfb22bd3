"""The per-step logic shared by Ray Train workers and the plain single-process loop (no Ray here).

* :func:`build_model` — fresh preset, ``--init`` (official ``geolrm.ckpt`` or one of our runs) and,
  in stage 2, the frozen proposal from ``--proposal``.
* :func:`setup` — which network trains, optimizer (AdamW), schedule, optional DDP wrapper, LPIPS net.
* :func:`make_batch` — one micro-batch: official view sampling, inputs on white, targets on one
  random background colour.
* :func:`forward_losses` — forward pass and the loss terms of a micro-batch.
* :func:`train_step` — one optimizer update: ``accumulate`` micro-batches (DDP gradient sync on the
  last one only), loss / accumulate, global-norm clipping, AdamW step, one scheduler step.

Stage 1 trains ``model.serializer`` (the whole proposal network). Stage 2 trains
``model.lrm_generator``; the proposal is frozen AND in eval mode (its BatchNorms use their running
statistics). The official code leaves it in train mode, so its BatchNorm normalises with batch
statistics and keeps updating the running ones during stage 2 (TRAINING.md 1.4); set
``proposal_train_mode=True`` to reproduce that quirk.

Other differences from the official code, each deliberate (TRAINING.md section in brackets):

* schedule stepped per optimizer update with W / T in updates (1.1; see ``schedule.py``);
* targets composited once, cleanly, on the random background (``rgb a + bg (1 - a)``), not the
  official double-alpha ``rgb a^2 + a (1 - a) + (1 - a) bg`` at soft edges (3.3);
* stage-2 tokens: paper maths (voxel centres, sorted subset, no zero padding) for our presets; a
  proposal that predicts fewer than ``min_tokens`` voxels gives its top-``min_tokens`` logits
  instead of failing (3.4); ``compat`` models (``--init geolrm.ckpt``) keep the official padding;
* the token subset and every view / background draw come from generators seeded by (seed, update,
  worker, micro-batch), not the global RNG, so a resumed run repeats the uninterrupted one;
* GT occupancy at R_gt = 128 is reduced to the model grid by ``index * R // 128`` (tiny: 32^3).
Under DDP, as in the official per-GPU code, the affinity loss, the depth loss (mean over valid
pixels) and BatchNorm statistics are per worker micro-batch, so N workers equal one worker
accumulating their N micro-batches, not one worker on the concatenated batch (tests check both,
the second with ``freeze_bn`` and no depth term).
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from geolrm_bench.errors import BenchError
from geolrm_bench.model.config import get_config
from geolrm_bench.model.gaussians import Gaussians
from geolrm_bench.model.geolrm import Anchors, GeoLRM, occupied_or_top
from geolrm_bench.training import losses
from geolrm_bench.training.config import OFFICIAL_TRAIN_TOKENS, TrainConfig
from geolrm_bench.training.data import TrainDataset
from geolrm_bench.training.schedule import make_scheduler
from geolrm_bench.training.views import sample_background, sample_input_positions, sample_object_views


# ----------------------------------------------------------------------------- model
def load_any(path: str | Path) -> GeoLRM:
    """A GeoLRM from a ``save_pretrained`` folder (one of our runs) or an official ``.ckpt`` file."""
    path = Path(path)
    if path.is_dir():
        return GeoLRM.from_pretrained(path)
    if path.is_file():
        return GeoLRM.load_official(path)
    raise BenchError("checkpoint not found (expected a run folder or an official .ckpt)", path)


def build_model(cfg: TrainConfig) -> GeoLRM:
    """The model to train: ``cfg.init`` weights or a fresh ``cfg.preset`` (seeded), plus, in stage 2,
    the proposal network of ``cfg.proposal`` (its shapes must match)."""
    torch.manual_seed(cfg.seed)
    if cfg.init:
        model = load_any(cfg.init)
    else:
        model = GeoLRM(get_config(cfg.preset, **cfg.model_overrides))
    if cfg.stage == "reconstruction" and cfg.proposal:
        src = load_any(cfg.proposal)
        try:
            model.serializer.load_state_dict(src.serializer.state_dict(), strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0][:200]
            raise BenchError(f"proposal network does not fit the {model.cfg.name!r} model: {first}",
                             cfg.proposal) from None
    return model


class _LRMForward(nn.Module):
    """``lrm_generator`` behind a plain ``forward`` (DDP hooks only ``forward``): anchors + images ->
    Gaussian fields (means, opacities, scales, quats, colors), each ``[B, N * G, ...]``."""

    def __init__(self, lrm: nn.Module, compat: bool):
        super().__init__()
        self.lrm, self.compat = lrm, compat

    def forward(self, xyz: Tensor, index: Tensor, mask: Tensor, images: Tensor, c2w: Tensor,
                K: Tensor) -> tuple[Tensor, ...]:
        anchors = Anchors(xyz=xyz, index=index, mask=mask)
        latents = self.lrm.forward_latents(anchors, images, c2w, K)
        g = self.lrm.renderer(xyz, latents, None if self.compat else mask)
        return g.means, g.opacities, g.scales, g.quats, g.colors


@dataclass
class StepModules:
    """Everything a step needs. ``net`` is the trained network, possibly DDP-wrapped (call it)."""

    cfg: TrainConfig
    model: GeoLRM
    trained: nn.Module  # model.serializer or model.lrm_generator
    net: nn.Module  # what the forward pass calls: trained (stage 1) / _LRMForward, maybe in DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    lpips: nn.Module | None = None
    ddp: bool = False

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.trained.parameters() if p.requires_grad]


def set_modes(sm: StepModules) -> None:
    """Train/eval modes and requires_grad for the stage (called at every step; validation flips them)."""
    m, cfg = sm.model, sm.cfg
    if cfg.stage == "proposal":
        m.serializer.train().requires_grad_(True)
        m.lrm_generator.eval().requires_grad_(False)
    else:
        m.serializer.train(cfg.proposal_train_mode).requires_grad_(False)
        m.lrm_generator.train().requires_grad_(True)
    if cfg.freeze_bn:
        for mod in sm.trained.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()


def setup(model: GeoLRM, cfg: TrainConfig, device: str | torch.device = "cpu",
          ddp: bool = False, lpips_net: nn.Module | None = None) -> StepModules:
    """Move ``model`` to ``device``, pick the trained network, build AdamW + schedule (+ DDP)."""
    device = torch.device(device)
    model.to(device)
    trained = model.serializer if cfg.stage == "proposal" else model.lrm_generator
    net: nn.Module = trained if cfg.stage == "proposal" else _LRMForward(trained, model.cfg.compat)
    optimizer = torch.optim.AdamW([p for p in trained.parameters()], lr=cfg.lr, betas=cfg.betas,
                                  weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.warmup, cfg.total_steps, cfg.eta_min)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # find_unused_parameters as the official trainer (train.py:256): with some ablation switches
        # parts of the encoder get no gradient
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True)
    if cfg.stage == "reconstruction" and lpips_net is None and cfg.w_lpips > 0:
        from geolrm_bench.metrics.lpips import build_lpips_network

        lpips_net = build_lpips_network(cfg.lpips_net, device)
    sm = StepModules(cfg, model, trained, net, optimizer, scheduler, device, lpips_net, ddp)
    set_modes(sm)
    return sm


# ----------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One micro-batch (B objects, Vi inputs, Vt = 8 supervised views).

    images/c2w_in/K_in: ``[B, Vi, 3, S, S]`` on white, ``[B, Vi, 4, 4]`` OpenGL, ``[B, Vi, 3, 3]``.
    target_rgb/alpha/depth: ``[B, Vt, 3|1|1, s, s]`` (rgb on ``background``); c2w/K: ``[B, Vt, ...]``.
    background ``[B, 3]``; occupancy ``[B, R, R, R]`` 0/1 (stage 1, or stage 2 with GT tokens);
    token_seed ``[B]`` int64 (per-object seed of the token subset).
    """

    images: Tensor
    c2w_in: Tensor
    K_in: Tensor
    target_rgb: Tensor
    target_alpha: Tensor
    target_depth: Tensor
    c2w: Tensor
    K: Tensor
    background: Tensor
    token_seed: Tensor
    occupancy: Tensor | None = None

    def to(self, device) -> Batch:
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                        for f in fields(self)})

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        """Concatenate along B (the inputs must have the same number of views)."""
        out = {}
        for f in fields(Batch):
            vals = [getattr(b, f.name) for b in batches]
            out[f.name] = None if vals[0] is None else torch.cat(vals)
        return Batch(**out)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, index: slice | list[int]) -> Batch:
        """Objects ``index`` of the batch (e.g. ``b.select(slice(0, 1))``)."""
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                        for f in fields(self)})


def make_batch(dataset: TrainDataset, items: list[int], rng: np.random.Generator, cfg: TrainConfig) -> Batch:
    """Load ``items`` with the official sampling (one input draw and background per micro-batch)."""
    draw = sample_input_positions(rng, cfg.stage, cfg.fixed_input_views)
    bg = sample_background(rng) if cfg.random_background else np.ones(3, np.float32)
    need_occ = cfg.stage == "proposal" or cfg.tokens == "gt"
    rows = []
    for i in items:
        views = sample_object_views(rng)
        s = dataset.load(i, views, occupancy=need_occ)
        pos = list(draw.positions)
        a = s["target_alpha"]
        bg_t = torch.from_numpy(bg).view(1, 3, 1, 1)
        # rgb on white = rgb a + (1 - a) (area resizing is linear, so this holds after resizing too)
        rgb = (s["target_rgb_white"] - (1 - a) + bg_t * (1 - a)).clamp(0, 1)
        rows.append(Batch(images=s["images"][pos][None], c2w_in=s["c2w"][pos][None], K_in=s["K"][pos][None],
                          target_rgb=rgb[None], target_alpha=a[None], target_depth=s["target_depth"][None],
                          c2w=s["c2w"][None], K=s["K"][None], background=torch.from_numpy(bg)[None],
                          token_seed=torch.tensor([int(rng.integers(0, 2**62))]),
                          occupancy=s["occupancy"][None] if need_occ else None))
    return Batch.cat(rows)


def step_rng(seed: int, step: int, rank: int, micro: int) -> np.random.Generator:
    """The generator of micro-batch ``micro`` of update ``step`` on worker ``rank`` (resume-exact)."""
    return np.random.default_rng([seed, step, rank, micro])


# ----------------------------------------------------------------------------- forward + losses
def train_token_cap(cfg: TrainConfig, model: GeoLRM) -> int:
    return int(cfg.train_max_tokens or min(OFFICIAL_TRAIN_TOKENS, model.cfg.max_tokens))


def select_anchors(model: GeoLRM, logits: Tensor, cap: int, min_tokens: int,
                   seeds: Tensor) -> tuple[Anchors, int]:
    """Tokens per object from occupancy ``logits`` ``[B, R, R, R]`` (occupied where > 0), a random
    subset above ``cap`` drawn from a generator seeded by ``seeds[b]``; padded across the batch with
    mask False. Paper maths: an object with fewer than ``min_tokens`` occupied voxels gets its
    ``min_tokens`` highest logits instead (an untrained proposal may predict nothing; the paper-maths
    anchors refuse an empty set). Returns the anchors and the number of such fallbacks."""
    items, fallbacks = [], 0
    for b in range(logits.shape[0]):
        lg = logits[b:b + 1]
        occ = lg > 0
        if not model.cfg.compat and int(occ.sum()) < min_tokens:
            occ = occupied_or_top(lg[0], min_tokens)[None]
            fallbacks += 1
        gen = torch.Generator().manual_seed(int(seeds[b]))
        items.append(model.anchors_from_occupancy(occ, cap, generator=gen))
    n = max(a.xyz.shape[1] for a in items)

    def pad(t: Tensor) -> Tensor:
        extra = n - t.shape[1]
        if extra == 0:
            return t
        return torch.cat([t, torch.zeros((1, extra, *t.shape[2:]), dtype=t.dtype, device=t.device)], 1)

    return Anchors(xyz=torch.cat([pad(a.xyz) for a in items]), index=torch.cat([pad(a.index) for a in items]),
                   mask=torch.cat([pad(a.mask) for a in items])), fallbacks


def _autocast(sm: StepModules):
    if sm.cfg.precision == "bf16":
        return torch.autocast(device_type=sm.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Timer:
    """Adds wall seconds per phase into ``into`` (no-op when ``into`` is None)."""

    def __init__(self, into: dict[str, float] | None):
        self.into = into

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.into is None:
            yield
            return
        import time

        sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
        sync()  # GPU work is asynchronous: time it to completion
        t0 = time.perf_counter()
        yield
        sync()
        self.into[name] = self.into.get(name, 0.0) + time.perf_counter() - t0


def forward_losses(sm: StepModules, batch: Batch, timings: dict[str, float] | None = None
                   ) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
    """Loss of one micro-batch: (weighted total, unweighted terms, info such as token counts).
    ``timings``: optional dict that receives wall seconds of ``forward``, ``raster``, ``lpips``."""
    model, cfg = sm.model, sm.cfg
    timer = _Timer(timings)
    images = model.prepare_images(batch.images)
    c2w_in, K_in = batch.c2w_in.float(), batch.K_in.float()
    info: dict[str, float] = {"inputs": float(images.shape[1])}
    if cfg.stage == "proposal":
        with timer("forward"), _autocast(sm):
            logits = sm.net(images, c2w_in, K_in)
        logits = logits.float()
        terms = {"bce": losses.occupancy_bce(logits, batch.occupancy),
                 "geo": losses.geo_scal_loss(logits, batch.occupancy)}
        with torch.no_grad():
            pred, gt = logits > 0, batch.occupancy > 0.5
            info["iou"] = float((pred & gt).sum() / (pred | gt).sum().clamp(min=1))
        return losses.weighted_total(terms, cfg.loss_weights()), terms, info
    # stage 2
    with timer("forward"), torch.no_grad():
        if cfg.tokens == "gt":
            logits = batch.occupancy * 2 - 1
        else:
            logits = model.serializer(images, c2w_in, K_in).float()
        anchors, fallbacks = select_anchors(model, logits, train_token_cap(cfg, model), cfg.min_tokens,
                                            batch.token_seed)
    info["tokens"] = float(anchors.mask.sum(1).float().mean())
    info["empty_proposals"] = float(fallbacks)
    with timer("forward"), _autocast(sm):
        fields_ = sm.net(anchors.xyz, anchors.index, anchors.mask, images, c2w_in, K_in)
    g = Gaussians(*[f.float() for f in fields_])
    s = batch.target_rgb.shape[-1]
    with timer("raster"):
        renders = [model.render(g[b:b + 1], batch.c2w[b:b + 1].float(), batch.K[b:b + 1].float(), s, s,
                                background=batch.background[b]) for b in range(len(batch))]
        out = {k: torch.cat([r[k] for r in renders]) for k in renders[0]}
    valid = batch.target_alpha > 0
    terms = {"mse": losses.image_mse(out["rgb"], batch.target_rgb),
             "mask": losses.mask_mse(out["alpha"], batch.target_alpha),
             "depth": losses.edge_aware_log_l1(out["depth"], batch.target_depth, batch.target_rgb, valid),
             "tv": losses.depth_tv(out["depth"])}
    if sm.lpips is not None:
        with timer("lpips"):
            terms["lpips"] = losses.lpips_loss(sm.lpips, out["rgb"], batch.target_rgb)
    with torch.no_grad():
        mse01 = ((out["rgb"] - batch.target_rgb) ** 2).mean().clamp(min=1e-10)
        info["psnr"] = float(-10 * torch.log10(mse01))
    return losses.weighted_total(terms, cfg.loss_weights()), terms, info


# ----------------------------------------------------------------------------- one update
def _all_mean(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return t.tolist()


def train_step(sm: StepModules, micro_batches: list[Batch],
               timings: dict[str, float] | None = None) -> dict[str, float]:
    """One optimizer update over ``micro_batches`` (the accumulation). Returns the metrics averaged
    over micro-batches and workers: ``loss``, each term, ``lr`` (used by this update), ``grad_norm``
    (global L2 norm before clipping) and ``finite``. A non-finite loss or gradient skips the update
    (no optimizer or scheduler step) and returns ``finite = 0``. ``timings`` (optional) receives
    wall seconds of ``forward``, ``raster``, ``lpips``, ``backward`` and ``optimizer``."""
    timer = _Timer(timings)
    set_modes(sm)
    sm.optimizer.zero_grad(set_to_none=True)
    k = len(micro_batches)
    sums: dict[str, float] = {}
    for i, mb in enumerate(micro_batches):
        sync = i == k - 1
        ctx = sm.net.no_sync() if (sm.ddp and not sync) else contextlib.nullcontext()
        with ctx:
            total, terms, info = forward_losses(sm, mb.to(sm.device), timings)
            with timer("backward"):
                (total / k).backward()
        for name, v in [("loss", total), *terms.items()]:
            sums[name] = sums.get(name, 0.0) + float(v.detach()) / k
        for name, v in info.items():
            sums[name] = sums.get(name, 0.0) + float(v) / k
    names = sorted(sums)
    means = dict(zip(names, _all_mean([sums[n] for n in names], sm.device)))
    with timer("optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(sm.params, sm.cfg.grad_clip)
        lr = float(sm.optimizer.param_groups[0]["lr"])
        finite = all(math.isfinite(v) for v in means.values()) and bool(torch.isfinite(grad_norm))
        if finite:
            sm.optimizer.step()
            sm.scheduler.step()
    return {**means, "lr": lr, "grad_norm": float(grad_norm), "finite": float(finite)}


# ----------------------------------------------------------------------------- state
def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def training_state(sm: StepModules, step: int) -> dict:
    """Model (both networks), optimizer, scheduler, RNG states and the data position (= ``step``)."""
    return {"step": int(step), "model": {k: v.detach().cpu() for k, v in sm.model.state_dict().items()},
            "optimizer": sm.optimizer.state_dict(), "scheduler": sm.scheduler.state_dict(),
            "rng": rng_state(), "config": sm.cfg.to_dict()}


def load_training_state(sm: StepModules, state: dict) -> int:
    """Restore :func:`training_state`; returns the step to continue from."""
    sm.model.load_state_dict(state["model"], strict=True)
    sm.optimizer.load_state_dict(state["optimizer"])
    sm.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])
