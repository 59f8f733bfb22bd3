"""``python -m geolrm_bench.gpu_check``: prove the GPU path in one short, guarded run (issue 14).

Made for a briefly lent, offline GPU node with a stock image (torch, transformers, numpy): this
module and everything it imports need nothing else (no ray, trimesh, pyrender, open3d, lpips,
OpenEXR, scipy, scikit-image, pandas); gsplat is used when it is importable. Steps, each timed and
guarded (an exception becomes a row with status ``error`` and a one-line reason, and the next step
runs):

1. ``golden`` (correctness): the shared golden outputs (``tests/data/golden/``) with the ``paper``
   preset in compat mode, fp32 with TF32 off, within :data:`geolrm_bench.golden.CUDA_TOLERANCES`.
2. ``rasterizer`` (correctness): our PyTorch rasterizer on the device vs on the CPU, same Gaussians
   (tiles and pairs paths; mean abs error <= 1e-4 per layer, max abs reported).
3. ``table3`` (performance): the ``paper`` preset, random weights, at 4/8/12/16/20 input views of
   448 px (the model's input size), 8192-token cap, in fp32 and in bf16 autocast: one warm-up,
   then the median of ``--repeats`` runs, each synchronised, CUDA max allocated and reserved;
   beside the paper's Table 3 (``geolrm_bench/data/paper_tables.csv``).
4. ``gsplat`` (correctness, when gsplat is importable): JIT build in a subprocess within the time
   left (build time reported), then gsplat vs ours on the same Gaussians (mean abs error <= 1e-3).
5. ``training`` (correctness, when ``geolrm_bench.training`` exists): a few updates of both stages
   of the tiny preset on one synthetic batch (the loss must drop; step time). Stage 2 renders
   with gsplat on CUDA, so it needs the gsplat step to have built it.

Then it writes ``reports/gpu/<device-name>/summary.md``, ``summary.csv``, ``table3.csv`` and
``config.json`` (written last: GPU, driver, versions, git commit, options), prints the table and
exits 1 when a correctness check failed or any step raised, else 0 (skips and Table 3 rows above
the paper's numbers do not change the exit code). Without CUDA it prints one ``no CUDA: ...`` line
and exits 0; ``--device cpu`` runs every step on the CPU as a stand-in (with ``--quick``: the tiny
preset at small sizes, seconds plus the imports; used by the tests).

Optional steps (table3, training, gsplat) are skipped with a reason when the time they need
would overrun ``--time-budget``; the Table 3 sweep also stops between cells.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import importlib.metadata
import importlib.util
import io
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import geolrm_bench.model as model_pkg
from geolrm_bench import golden as gold
from geolrm_bench.cameras import gobjaverse_c2w, intrinsics_from_fov
from geolrm_bench.errors import BenchError, one_line
from geolrm_bench.io import write_json_atomic, write_text_atomic
from geolrm_bench.metrics.cost import cpu_name, measure_cost
from geolrm_bench.model.config import get_config
from geolrm_bench.model.gaussians import shell_gaussians
from geolrm_bench.model.geolrm import GeoLRM
from geolrm_bench.model.rasterize import render_gaussians
from geolrm_bench.protocol import DEFAULT_TEST_VIEWS, SWEEP_NUM_INPUT_VIEWS, input_view_ids

PAPER_TABLES = Path(__file__).resolve().parent / "data" / "paper_tables.csv"
REPO_ROOT = Path(__file__).resolve().parents[1]
STATUSES = ("ok", "fail", "error", "skip", "info")
# ours on the device vs ours on the CPU, per layer: fp32 rounding plus rare threshold flips (an alpha
# near 1/255 or a transmittance near 1e-4 taken on one device and not the other)
RASTER_MAE_LIMIT = 1e-4
GSPLAT_MAE_LIMIT = 1e-3  # gsplat vs ours (issue 14's goal)
REPORT_RESERVE_S = 20.0  # time kept back from the budget for writing the report


# --------------------------------------------------------------------------------------------
# rows, steps, budget
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the report: a check (pass/fail), a measurement (info) or a skip/error."""

    step: str
    check: str
    status: str  # ok | fail | error | skip | info
    correctness: bool = False  # a failed/errored correctness row makes the exit code 1
    seconds: float = float("nan")
    measured: float | None = None
    limit: float | None = None
    unit: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"row status must be one of {STATUSES}, got {self.status!r}")


@dataclass(frozen=True)
class Plan:
    """Sizes of one run, from the options and the device (see :func:`make_plan`)."""

    device: str
    quick: bool
    views: tuple[int, ...]  # Table 3 input views
    repeats: int  # timed runs per Table 3 cell (median reported)
    warmup: int  # untimed runs before them
    bench_preset: str
    bench_input_size: int  # image size fed to the model (its input size: no resize inside)
    dtypes: tuple[str, ...]  # "fp32", "bf16"
    raster_gaussians: int
    raster_size: int
    raster_views: int
    train_steps: int
    train_render_size: int  # supervision size of the training step, px
    train_inputs: int  # input views of its synthetic batch
    train_gaussians: int  # Gaussians of its synthetic object
    golden: bool  # False: the golden step is skipped (CPU + --quick: ~2 min on 2 cores)
    skip: tuple[str, ...] = ()


@dataclass
class Budget:
    """Wall-clock budget of the run in seconds, counted from ``start``."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def allows(self, seconds: float) -> bool:
        return self.left() - REPORT_RESERVE_S >= seconds


@dataclass
class Context:
    """What the steps share: the plan, the device, the budget, and results for the report."""

    plan: Plan
    budget: Budget
    log: Callable[[str], None] = print
    table3: list[dict] = field(default_factory=list)
    gsplat_ready: bool = False  # set by the gsplat step when gsplat built and ran

    @property
    def device(self) -> torch.device:
        return torch.device(self.plan.device)


@dataclass(frozen=True)
class Step:
    """A guarded step: ``fn(ctx) -> rows``; ``estimate(ctx)`` = seconds it needs at least."""

    name: str
    title: str
    fn: Callable[[Context], list[Row]]
    correctness: bool
    optional: bool  # skipped when the budget cannot hold ``estimate``
    estimate: Callable[[Context], float] = lambda ctx: 0.0


@dataclass
class StepResult:
    name: str
    title: str
    status: str
    seconds: float
    rows: list[Row]


def _worst(rows: Sequence[Row]) -> str:
    for status in ("error", "fail", "ok", "info", "skip"):
        if any(r.status == status for r in rows):
            return status
    return "skip"


def run_steps(steps: Sequence[Step], ctx: Context) -> list[StepResult]:
    """Run each step guarded and timed; one failing or raising step never hides the rest."""
    results = []
    for step in steps:
        t0 = time.perf_counter()
        if step.name in ctx.plan.skip:
            rows = [Row(step.name, "step", "skip", step.correctness, detail="skipped by --skip")]
        elif step.optional and not ctx.budget.allows(need := step.estimate(ctx)):
            rows = [Row(step.name, "step", "skip", step.correctness,
                        detail=f"time budget: needs ~{need:.0f} s, {max(0.0, ctx.budget.left()):.0f} s left")]
        else:
            ctx.log(f"[{step.name}] {step.title} ...")
            try:
                rows = list(step.fn(ctx))
            except Exception as e:  # noqa: BLE001 - a step's failure is a report row, not a crash
                rows = [Row(step.name, "step", "error", step.correctness, detail=one_line(e, 300))]
            finally:
                gc.collect()
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
            if not rows:
                rows = [Row(step.name, "step", "error", step.correctness, detail="the step returned no rows")]
        seconds = time.perf_counter() - t0
        results.append(StepResult(step.name, step.title, _worst(rows), seconds, rows))
        ctx.log(f"[{step.name}] {results[-1].status} in {seconds:.1f} s")
    return results


def exit_code(results: Sequence[StepResult]) -> int:
    """1 when a correctness row failed or errored, or any row errored; else 0 (skips never count)."""
    for res in results:
        for r in res.rows:
            if r.status == "error" or (r.correctness and r.status == "fail"):
                return 1
    return 0


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tf32_state() -> dict[str, str]:
    """The fp32 matmul / cuDNN conv precision settings as torch reports them ("ieee" = no TF32)."""
    state: dict[str, str] = {}
    for name, obj in (("matmul", getattr(torch.backends.cuda, "matmul", None)),
                      ("cudnn_conv", getattr(torch.backends.cudnn, "conv", None))):
        prec = getattr(obj, "fp32_precision", None)
        if prec is not None:
            state[name] = str(prec)
    if len(state) < 2:  # older torch: the legacy flags
        state["matmul"] = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        state["cudnn_conv"] = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    state["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return state


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off for matmul and cuDNN inside the block (torch's new ``fp32_precision`` settings where
    it has them, else the legacy ``allow_tf32`` flags), restored afterwards."""
    new_api = [o for o in (getattr(torch.backends.cuda, "matmul", None),
                           getattr(torch.backends.cudnn, "conv", None),
                           getattr(torch.backends.cudnn, "rnn", None)) if hasattr(o, "fp32_precision")]
    mm_prec = torch.get_float32_matmul_precision()
    if len(new_api) == 3:
        saved = [o.fp32_precision for o in new_api]
        for o in new_api:
            o.fp32_precision = "ieee"
        try:
            yield
        finally:
            for o, v in zip(new_api, saved):
                o.fp32_precision = v
        return
    saved_flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_flags
        torch.set_float32_matmul_precision(mm_prec)


def autocast_for(dtype: str, device: torch.device):
    """``nullcontext`` for fp32, bf16 autocast on ``device`` for bf16."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise BenchError(f"unknown dtype {dtype!r} (fp32, bf16)")


def model_inputs(num_views: int, size: int, device: torch.device, seed: int = 0):
    """Random images ``[1, V, 3, S, S]`` on the GObjaverse orbit views of the evaluation protocol,
    OpenGL c2w ``[1, V, 4, 4]`` and normalised K ``[1, V, 3, 3]`` (fov 39.6 deg)."""
    ids = input_view_ids(num_views)
    c2w = torch.as_tensor(gobjaverse_c2w(ids, convention="opengl"), dtype=torch.float32)
    K = torch.as_tensor(intrinsics_from_fov(), dtype=torch.float32)
    images = torch.rand(1, num_views, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return (images.to(device), c2w[None].to(device),
            K[None, None].expand(1, num_views, 3, 3).contiguous().to(device))


def raster_cameras(view_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:  # [V, 4, 4], [V, 3, 3]
    """GObjaverse cameras of ``view_ids``: OpenGL c2w and normalised K (fov 39.6 deg), float32."""
    c2w = torch.as_tensor(gobjaverse_c2w(list(view_ids), convention="opengl"), dtype=torch.float32)
    K = torch.as_tensor(intrinsics_from_fov(), dtype=torch.float32)
    return c2w, K[None].expand(len(view_ids), 3, 3).contiguous()


def layer_errors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Per output layer (rgb, alpha, depth): (mean abs error, max abs error), in float64 on the CPU."""
    out = {}
    for k in ("rgb", "alpha", "depth"):
        d = (a[k].detach().to("cpu", torch.float64) - b[k].detach().to("cpu", torch.float64)).abs()
        out[k] = (float(d.mean()), float(d.max()))
    return out


def _median_time(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paper_table3(path: Path = PAPER_TABLES) -> dict[int, tuple[float, float]]:
    """GeoLRM's Table 3 cost rows: ``{views: (seconds, GB)}`` from the package's paper tables."""
    rows = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["table"] == "3" and r["method"] == "GeoLRM" and r["inference_s"]:
                rows[int(r["num_input_views"])] = (float(r["inference_s"]), float(r["memory_gb"]))
    return rows


# --------------------------------------------------------------------------------------------
# the steps
# --------------------------------------------------------------------------------------------
def step_golden(ctx: Context) -> list[Row]:
    """Compat-mode golden outputs on the device, fp32, TF32 off."""
    if not ctx.plan.golden:
        return [Row("golden", "step", "skip", True,
                    detail="--quick on the CPU: the paper-size forward takes minutes there "
                           "(tests/test_model_official.py runs it)")]
    t0 = time.perf_counter()
    data = gold.load_golden(gold.GOLDEN_DIR)
    rows = []
    manifest = gold.check_manifest(data, Path(model_pkg.__file__).parent / "official_keys.tsv")
    rows.append(Row("golden", "manifest_sha256", "ok" if manifest.ok else "fail", True,
                    detail=manifest.detail))
    tol = gold.tolerances_for(ctx.device)
    with strict_fp32():
        model = gold.golden_model(gold.GOLDEN_DIR, ctx.device)
        t1 = time.perf_counter()
        outputs = gold.golden_forward(model, data, ctx.device)
        t2 = time.perf_counter()
    del model
    checks = gold.compare_golden(outputs, data, tol)
    for c in checks:
        rows.append(Row("golden", c.name, "ok" if c.ok else "fail", True, measured=c.error, limit=c.limit,
                        unit="rel" if c.kind == "rel" else ("abs logit" if c.kind == "flips" else "max abs"),
                        detail=c.detail))
    rows.append(Row("golden", "load + forward", "info", seconds=t2 - t0,
                    detail=f"weights {t1 - t0:.1f} s, forward {t2 - t1:.1f} s; {tol.name} tolerances, "
                           f"TF32 off"))
    return rows


def step_rasterizer(ctx: Context) -> list[Row]:
    """Our rasterizer on the device vs on the CPU (same Gaussians, both torch paths)."""
    p = ctx.plan
    g = shell_gaussians(p.raster_gaussians, seed=1)
    c2w, K = raster_cameras(input_view_ids(p.raster_views))
    size = p.raster_size
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = render_gaussians(g, c2w, K, size, size, backend="torch", method="auto")
        cpu_s = time.perf_counter() - t0
        gd = g.to(ctx.device)
        rows = []
        for method in ("tiles", "pairs"):
            def run(method=method):
                return render_gaussians(gd, c2w, K, size, size, backend="torch", method=method)
            out = run()
            secs = _median_time(run, ctx.device)
            errs = layer_errors(out, ref)
            worst = max(errs, key=lambda k: errs[k][0])
            mae = errs[worst][0]
            ok = all(e[0] <= RASTER_MAE_LIMIT for e in errs.values())
            detail = ", ".join(f"{k} MAE {e[0]:.2g} max {e[1]:.2g}" for k, e in errs.items())
            detail += f"; {secs * 1e3:.1f} ms on {ctx.device.type} vs {cpu_s * 1e3:.0f} ms cpu (auto)"
            rows.append(Row("rasterizer", f"torch {method}: {ctx.device.type} vs cpu", "ok" if ok else "fail",
                            True, seconds=secs, measured=mae, limit=RASTER_MAE_LIMIT, unit="MAE",
                            detail=detail))
    rows.append(Row("rasterizer", "scene", "info",
                    detail=f"{p.raster_gaussians:,} Gaussians, {p.raster_views} views of {size}x{size}"))
    return rows


def _table3_estimate(ctx: Context) -> float:
    return 40.0 if ctx.device.type == "cuda" and ctx.plan.bench_preset == "paper" else 2.0


def step_table3(ctx: Context) -> list[Row]:
    """Paper Table 3 protocol: time and memory of the reconstruction vs input views, fp32 and bf16."""
    p, dev = ctx.plan, ctx.device
    cfg = get_config(p.bench_preset)
    if p.bench_input_size != cfg.input_size:
        cfg = cfg.replace(input_size=p.bench_input_size)
    paper = paper_table3() if p.bench_preset == "paper" else {}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(dev):  # initialise the random weights where they run (seconds on a GPU)
        model = GeoLRM(cfg)
    model = model.eval()
    init_s = time.perf_counter() - t0
    rows = [Row("table3", "model", "info", seconds=init_s,
                detail=f"{cfg.name} preset, random weights, {sum(t.numel() for t in model.parameters()):,} "
                       f"parameters, {cfg.input_size} px inputs (no resize), token cap {cfg.max_tokens}, "
                       f"{p.warmup} warm-up + median of {p.repeats}")]
    per_run: dict[str, float] = {}  # dtype -> seconds per view per run, for the budget estimate
    for v in p.views:  # view counts outer: a budget cut keeps both dtypes of the smaller counts
        for dtype in p.dtypes:
            name = f"{dtype} {v} views"
            guess = per_run.get(dtype, per_run.get("fp32", 0.0)) * v * (p.warmup + p.repeats) + 1.0
            if per_run and not ctx.budget.allows(guess):
                rows.append(Row("table3", name, "skip", detail=f"time budget: needs ~{guess:.0f} s, "
                                f"{max(0.0, ctx.budget.left()):.0f} s left"))
                continue
            try:
                rows.append(_table3_cell(ctx, model, cfg, dtype, v, paper.get(v), per_run))
            except torch.cuda.OutOfMemoryError as e:
                rows.append(Row("table3", name, "error", detail=one_line(e, 200)))
            except Exception as e:  # noqa: BLE001 - one cell's failure must not hide the others
                rows.append(Row("table3", name, "error", detail=one_line(e, 300)))
            finally:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def _table3_cell(ctx: Context, model: GeoLRM, cfg, dtype: str, views: int,
                 paper: tuple[float, float] | None, per_run: dict[str, float]) -> Row:
    p, dev = ctx.plan, ctx.device
    images, c2w, K = model_inputs(views, cfg.input_size, dev)
    t_start = time.perf_counter()

    def forward():
        return model.reconstruct(images, c2w, K, max_tokens=cfg.max_tokens, resize=False,
                                 generator=torch.Generator().manual_seed(0))

    times, alloc, reserved, method, n_gauss = [], 0, 0, "", 0
    with torch.inference_mode(), autocast_for(dtype, dev):
        for _ in range(p.warmup):
            forward()
        for _ in range(p.repeats):
            with measure_cost(dev) as cost:
                g = forward()
            times.append(cost.seconds)
            alloc = max(alloc, cost.peak_memory_bytes)
            reserved = max(reserved, cost.peak_reserved_bytes)
            method, n_gauss = cost.memory_method, int(g.means.shape[-2])
            del g
    med = statistics.median(times)
    per_run[dtype] = med / views
    gb = 1e9  # decimal GB: the stricter reading of the paper's "GB" (a GiB figure would be 7 % smaller)
    rec = {"dtype": dtype, "views": views, "preset": cfg.name, "input_size": cfg.input_size,
           "gaussians": n_gauss, "runs": len(times), "time_median_s": med, "time_min_s": min(times),
           "max_allocated_gb": alloc / gb, "max_reserved_gb": reserved / gb if reserved else None,
           "memory_method": method, "paper_time_s": paper[0] if paper else None,
           "paper_memory_gb": paper[1] if paper else None}
    if paper:
        rec["time_vs_paper"] = med / paper[0]
        rec["memory_vs_paper"] = (alloc / gb) / paper[1]
        rec["meets_paper"] = bool(med <= paper[0] and alloc / gb <= paper[1])
    ctx.table3.append(rec)
    mem = f"max allocated {alloc / gb:.2f} GB" + (f", reserved {reserved / gb:.2f} GB" if reserved else
                                                  f" ({method})")
    vs = (f"; paper {paper[0]:.2f} s / {paper[1]:.2f} GB: time x{rec['time_vs_paper']:.2f}, "
          f"memory x{rec['memory_vs_paper']:.2f}" if paper else "")
    ctx.log(f"  {dtype} {views} views: {med:.3f} s, {mem}")
    return Row("table3", f"{dtype} {views} views", "info", seconds=time.perf_counter() - t_start,
               measured=med, limit=paper[0] if paper else None, unit="s",
               detail=f"{n_gauss:,} Gaussians, {mem}{vs}")


def _training_estimate(ctx: Context) -> float:
    return 10.0 + 2.0 * ctx.plan.train_steps


def synthetic_scene_batch(model_cfg, render_size: int, n_inputs: int = 4, n_gaussians: int = 4000,
                          seed: int = 0) -> dict[str, torch.Tensor]:
    """One training micro-batch (B = 1) of a synthetic object, CPU tensors keyed like the trainer's ``Batch``.

    The object is :func:`shell_gaussians` (a coloured shell of radius 0.35) rendered by our rasterizer
    on white: ``n_inputs`` orbit views at the model's input size as inputs, the four evaluation ring
    views at ``render_size`` as targets (depth = rendered depth / alpha where alpha > 0.5, else 0),
    and its occupancy on the model grid (voxels holding a Gaussian centre). No files are read.
    """
    g = shell_gaussians(n_gaussians, seed=seed, scale=(0.01, 0.03))
    S, s, R = model_cfg.input_size, render_size, model_cfg.grid_res
    c2w_in, K_in = raster_cameras(input_view_ids(n_inputs))
    c2w_t, K_t = raster_cameras(list(DEFAULT_TEST_VIEWS))
    with torch.no_grad():
        inp = render_gaussians(g, c2w_in, K_in, S, S, backend="torch")
        tgt = render_gaussians(g, c2w_t, K_t, s, s, backend="torch")
    alpha = tgt["alpha"]
    depth = torch.where(alpha > 0.5, tgt["depth"] / alpha.clamp_min(1e-6), torch.zeros_like(alpha))
    idx = ((g.means + 0.5) * R).floor().long().clamp(0, R - 1)
    occ = torch.zeros(R, R, R)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = 1.0
    return {"images": inp["rgb"].clamp(0, 1)[None], "c2w_in": c2w_in[None], "K_in": K_in[None],
            "target_rgb": tgt["rgb"].clamp(0, 1)[None], "target_alpha": alpha[None],
            "target_depth": depth[None],
            "c2w": c2w_t[None], "K": K_t[None], "background": torch.ones(1, 3),
            "token_seed": torch.tensor([seed]), "occupancy": occ[None]}


def step_training(ctx: Context) -> list[Row]:
    """A few updates of each training stage (tiny preset) on one synthetic batch: the loss must drop."""
    try:
        # optional: the trainer (issue 11) is absent from older checkouts; the check then skips this step
        from geolrm_bench.training import loop as train_loop
        from geolrm_bench.training.config import TrainConfig
    except ModuleNotFoundError as e:
        if (e.name or "").startswith("geolrm_bench.training"):
            return [Row("training", "step", "skip", True, detail=f"no trainer here ({one_line(e, 120)})")]
        raise
    p, dev = ctx.plan, ctx.device
    overrides = {"input_size": p.bench_input_size} if p.bench_preset == "tiny" and p.quick else {}
    model_cfg = get_config("tiny", **overrides)
    render_size = p.train_render_size
    fields_ = synthetic_scene_batch(model_cfg, render_size, p.train_inputs, p.train_gaussians)
    batch = train_loop.Batch(**fields_)
    rows = []
    for stage in ("proposal", "reconstruction"):
        name = f"{stage} ({p.train_steps} updates)"
        if stage == "reconstruction" and dev.type == "cuda" and not ctx.gsplat_ready:
            rows.append(Row("training", name, "skip", True,
                            detail="stage 2 renders with gsplat on CUDA (GeoLRM.render's auto backend), and "
                                   "gsplat is not built here (see the gsplat step)"))
            continue
        if not ctx.budget.allows(_training_estimate(ctx) / 2):
            rows.append(Row("training", name, "skip", True, detail="time budget"))
            continue
        # one fixed batch, no warm-up, no LPIPS term (the lpips package is not on a stock GPU image),
        # ground-truth tokens in stage 2; otherwise the official recipe of the stage
        cfg = TrainConfig(stage=stage, preset="tiny", model_overrides=overrides, steps=p.train_steps,
                          warmup=0, total_steps=p.train_steps + 1, batch_size=1, accumulate=1, tokens="gt",
                          w_lpips=0.0, render_size=render_size, random_background=False, progress=False,
                          val_every=0)
        torch.manual_seed(cfg.seed)
        with torch.device(dev):
            model = GeoLRM(model_cfg)
        sm = train_loop.setup(model, cfg, dev)
        losses, times, phases = [], [], {}  # phases: the trainer's own split of the steps after the first
        for i in range(p.train_steps):
            _sync(dev)
            t0 = time.perf_counter()
            metrics = train_loop.train_step(sm, [batch], timings=phases if i else None)
            _sync(dev)
            times.append(time.perf_counter() - t0)
            losses.append(float(metrics["loss"]))
        split = ", ".join(f"{k} {v / (p.train_steps - 1) * 1e3:.0f}" for k, v in phases.items())
        finite = all(math.isfinite(v) for v in losses)
        drop = losses[0] - losses[-1]
        ok = finite and drop > 0
        detail = (f"loss {' -> '.join(f'{v:.4g}' for v in losses)}; step "
                  f"{statistics.median(times[1:] or times) * 1e3:.0f} ms (median after the first "
                  f"{times[0] * 1e3:.0f} ms" + (f"; mean ms: {split}" if split else "") + ")")
        rows.append(Row("training", name, "ok" if ok else "fail", True, seconds=sum(times),
                        measured=losses[-1], limit=losses[0], unit="loss",
                        detail=detail + ("" if finite else "; non-finite loss")))
        del sm, model
    return rows


def _gsplat_estimate(ctx: Context) -> float:
    return 60.0


def _gsplat_build(ctx: Context, timeout: float) -> tuple[bool, float, str]:
    """JIT-build gsplat's CUDA extension in a child process (its own session, killed on timeout).

    Returns (built, seconds, reason). The build lands in torch's extension cache, which the
    in-process import then loads.
    """
    # this GPU's architecture only (a much shorter build), and the same settings in this process,
    # whose later import of gsplat must load that build, not start another one
    if ctx.device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(ctx.device)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    os.environ.setdefault("MAX_JOBS", str(max(1, (os.cpu_count() or 2) - 1)))
    env = dict(os.environ)
    code = ("import sys, gsplat.cuda._backend as b\n"
            "sys.exit(0 if getattr(b, '_C', None) is not None else 3)\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the build's compilers too (same session)
        proc.communicate()
        return False, time.perf_counter() - t0, f"JIT build did not finish in the {timeout:.0f} s left"
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = [ln.strip() for ln in out.decode(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error:" in ln.lower()]  # first compiler error, else last line
        why = (errors or lines[-1:] or ["no output"])[0][:200]
        if proc.returncode == 3:
            why = "no CUDA toolkit found for the JIT build"
        return False, secs, f"JIT build failed (exit {proc.returncode}): {why}"
    return True, secs, ""


def step_gsplat(ctx: Context) -> list[Row]:
    """gsplat vs our rasterizer on the same Gaussians (build time reported)."""
    if ctx.device.type != "cuda":
        return [Row("gsplat", "step", "skip", True, detail="gsplat needs CUDA")]
    if importlib.util.find_spec("gsplat") is None:
        return [Row("gsplat", "step", "skip", True,
                    detail="gsplat is not installed (carry its wheel: scripts/gpu_carry_kit.sh)")]
    left = ctx.budget.left() - REPORT_RESERVE_S - 15.0
    built, build_s, why = _gsplat_build(ctx, left)
    if not built:
        status = "skip" if why.startswith("JIT build did not finish") else "error"
        return [Row("gsplat", "JIT build", status, True, seconds=build_s, detail=why)]
    rows = [Row("gsplat", "JIT build (or cache load)", "info", seconds=build_s, measured=build_s, unit="s")]
    p = ctx.plan
    g = shell_gaussians(p.raster_gaussians, seed=1).to(ctx.device)
    c2w, K = raster_cameras(input_view_ids(p.raster_views))
    size = p.raster_size
    distance = float(c2w[:, :3, 3].norm(dim=1).mean())
    with torch.no_grad():
        def ours():
            return render_gaussians(g, c2w, K, size, size, backend="torch", method="tiles")

        def theirs():
            return render_gaussians(g, c2w, K, size, size, backend="gsplat")
        a, b = ours(), theirs()
        t_ours, t_gs = _median_time(ours, ctx.device), _median_time(theirs, ctx.device)
    ctx.gsplat_ready = True
    errs = layer_errors(b, a)
    for k, (mae, mx) in errs.items():
        value = mae / distance if k == "depth" else mae
        unit = "MAE / camera distance" if k == "depth" else "MAE"
        rows.append(Row("gsplat", f"{k}: gsplat vs ours", "ok" if value <= GSPLAT_MAE_LIMIT else "fail", True,
                        measured=value, limit=GSPLAT_MAE_LIMIT, unit=unit, detail=f"max abs {mx:.3g}"))
    rows.append(Row("gsplat", "render time", "info", seconds=t_gs, measured=t_gs, unit="s",
                    detail=f"gsplat {t_gs * 1e3:.1f} ms vs ours (tiles) {t_ours * 1e3:.1f} ms, "
                           f"{p.raster_gaussians:,} Gaussians, {p.raster_views} views of {size}x{size}"))
    return rows


STEPS: tuple[Step, ...] = (
    Step("golden", "golden outputs, compat mode, fp32 without TF32", step_golden, True, False),
    Step("rasterizer", "our rasterizer: device vs CPU", step_rasterizer, True, False),
    Step("table3", "Table 3: time and memory vs input views", step_table3, False, True, _table3_estimate),
    Step("gsplat", "gsplat vs our rasterizer", step_gsplat, True, True, _gsplat_estimate),
    Step("training", "training steps of the tiny preset", step_training, True, True, _training_estimate),
)


# --------------------------------------------------------------------------------------------
# environment and report
# --------------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu {cpu_name()}"


def slug(text: str) -> str:
    """A folder name: runs of characters other than letters, digits, '.', '_' and '-' become '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "device"


def _probe(fn: Callable[[], object]) -> object:
    """``fn()``, or ``"unavailable: <reason>"`` when it raises (a broken driver must not stop the run)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recorded in config.json instead
        return f"unavailable: {one_line(e, 200)}"


def git_commit() -> tuple[str, str]:
    """(commit, source): ``git rev-parse HEAD`` (+ ``-dirty``), else GEOLRM_BENCH_COMMIT, else the
    ``gpu_kit/COMMIT`` file the carry kit writes (a copied checkout usually has no ``.git``)."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT)
    if commit:
        dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT)
        return commit + ("-dirty" if dirty else ""), "git"
    if os.environ.get("GEOLRM_BENCH_COMMIT"):
        return os.environ["GEOLRM_BENCH_COMMIT"], "GEOLRM_BENCH_COMMIT"
    kit = REPO_ROOT / "gpu_kit" / "COMMIT"
    if kit.is_file():
        return kit.read_text().strip(), "gpu_kit/COMMIT (when the carry kit was made)"
    return "unknown", "no git, no GEOLRM_BENCH_COMMIT, no gpu_kit/COMMIT"


def environment(device: torch.device) -> dict:
    """GPU, driver, versions, git commit: what config.json records."""
    env = {"device": str(device), "device_name": _probe(lambda: device_name(device)),
           "host": socket.gethostname(), "python": platform.python_version(), "platform": platform.platform(),
           "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda,
           "cudnn": _probe(torch.backends.cudnn.version),
           "versions": {d: _version(d) for d in ("numpy", "transformers", "gsplat", "safetensors",
                                                  "geolrm-bench")},
           "tf32_defaults": _probe(tf32_state)}
    if device.type == "cuda":
        def gpu() -> dict:
            prop = torch.cuda.get_device_properties(device)
            return {"name": prop.name, "capability": f"{prop.major}.{prop.minor}",
                    "memory_gib": round(prop.total_memory / 2**30, 2),
                    "multiprocessors": prop.multi_processor_count}
        env["gpu"] = _probe(gpu)
        env["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    env["git_commit"], env["git_commit_source"] = git_commit()
    return env


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if (abs(v) < 1e-2 and v != 0) or abs(v) >= 1e4:
            return f"{v:.3g}"
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v).replace("|", "/")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table (cells formatted by :func:`_fmt`)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


CHECK_HEADERS = ("step", "check", "status", "measured", "limit", "unit", "seconds", "detail")
TABLE3_COLUMNS = ("dtype", "views", "preset", "input_size", "gaussians", "runs", "time_median_s",
                  "time_min_s", "max_allocated_gb", "max_reserved_gb", "memory_method", "paper_time_s",
                  "paper_memory_gb",
                  "time_vs_paper", "memory_vs_paper", "meets_paper")


def _check_cells(r: Row) -> list:
    return [r.step, r.check, r.status, r.measured, r.limit, r.unit, r.seconds, r.detail]


def checks_csv(results: Sequence[StepResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "check", "status", "correctness", "measured", "limit", "unit", "seconds", "detail"])
    for res in results:
        for r in res.rows:
            w.writerow([r.step, r.check, r.status, r.correctness,
                        "" if r.measured is None else repr(r.measured),
                        "" if r.limit is None else repr(r.limit), r.unit,
                        "" if math.isnan(r.seconds) else f"{r.seconds:.4f}", r.detail])
    return buf.getvalue()


def table3_csv(records: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE3_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in TABLE3_COLUMNS})
    return buf.getvalue()


def table3_markdown(records: Sequence[dict]) -> str:
    """Table 3 side by side: per view count, fp32 and bf16 beside the paper."""
    views = sorted({r["views"] for r in records})
    by = {(r["dtype"], r["views"]): r for r in records}
    rows = []
    for v in views:
        any_rec = next(r for r in records if r["views"] == v)
        cells = [v, any_rec.get("paper_time_s"), any_rec.get("paper_memory_gb")]
        for dt in ("fp32", "bf16"):
            r = by.get((dt, v), {})
            cells += [r.get("time_median_s"), r.get("max_allocated_gb"), r.get("max_reserved_gb"),
                      r.get("meets_paper")]
        rows.append(cells)
    headers = ["views", "paper s", "paper GB"]
    for dt in ("fp32", "bf16"):
        headers += [f"{dt} s", f"{dt} alloc GB", f"{dt} reserved GB", f"{dt} <= paper"]
    return markdown_table(headers, rows)


def summary_markdown(results: Sequence[StepResult], ctx: Context, env: dict, code: int) -> str:
    p = ctx.plan
    lines = [f"# GPU check: {env['device_name']}", "",
             f"Result: **{'PASS' if code == 0 else 'FAIL'}** (exit {code}: 1 when a correctness check failed "
             "or any step raised; skips and Table 3 rows above the paper do not count).", "",
             f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, commit `{env['git_commit']}`, "
             f"torch {env['torch']} (CUDA {env['torch_cuda']}), driver {env.get('driver') or 'n/a'}, "
             f"transformers {env['versions'].get('transformers')}, "
             f"gsplat {env['versions'].get('gsplat') or 'absent'}; "
             f"{ctx.budget.elapsed():.0f} s of a {ctx.budget.total_s:.0f} s budget"
             + (", --quick" if p.quick else "") + ".", ""]
    if ctx.device.type != "cuda":
        lines += ["**CPU stand-in run** (`--device cpu`): it exercises the steps, it proves nothing "
                  "about a GPU.", ""]
    lines += ["## Steps", "", markdown_table(["step", "what", "status", "seconds"],
                                             [[r.name, r.title, r.status, r.seconds] for r in results]), ""]
    if ctx.table3:
        counter = ("`torch.cuda.max_memory_allocated` / `max_memory_reserved`" if ctx.device.type == "cuda"
                   else "process RSS (`measure_cost` on the CPU; no reserved pool)")
        lines += ["## Table 3: reconstruction time and memory vs input views", "",
                  f"{ctx.table3[0]['preset']} preset, random weights (time and memory do not depend on "
                  f"them), {ctx.table3[0]['input_size']} px inputs, token cap as the preset, one batch "
                  f"item; {p.warmup} warm-up, median of {p.repeats} synchronised runs; memory = peak "
                  f"{counter} over the runs, weights included, in GB = 1e9 bytes (the stricter reading "
                  "of the paper's GB). fp32 with torch's default TF32 settings (see config.json), "
                  "bf16 = autocast. Paper: official code on the paper's GPU, GB as printed.", "",
                  table3_markdown(ctx.table3), ""]
    lines += ["## Checks", "",
              markdown_table(CHECK_HEADERS, [_check_cells(r) for res in results for r in res.rows]), "",
              "Tolerances: golden on CUDA = `geolrm_bench.golden.CUDA_TOLERANCES` (README, GPU check); "
              f"rasterizer device vs CPU MAE <= {RASTER_MAE_LIMIT:g} per layer; gsplat vs ours MAE <= "
              f"{GSPLAT_MAE_LIMIT:g} (depth: MAE divided by the camera distance).", ""]
    return "\n".join(lines)


def write_report(out: Path, results: Sequence[StepResult], ctx: Context, env: dict, code: int,
                 options: dict) -> list[Path]:
    """summary.md, summary.csv, table3.csv, then config.json (last: its presence marks a full report)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_text_atomic(out / "summary.md", summary_markdown(results, ctx, env, code)),
             write_text_atomic(out / "summary.csv", checks_csv(results)),
             write_text_atomic(out / "table3.csv", table3_csv(ctx.table3))]
    config = {"exit_code": code, "elapsed_s": round(ctx.budget.elapsed(), 2), "options": options,
              "plan": asdict(ctx.plan), "environment": env,
              "steps": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 3)}
                        for r in results],
              "tolerances": {"golden": asdict(gold.tolerances_for(ctx.device)),
                             "rasterizer_mae": RASTER_MAE_LIMIT, "gsplat_mae": GSPLAT_MAE_LIMIT}}
    paths.append(write_json_atomic(out / "config.json", config))
    return paths


def print_table(results: Sequence[StepResult], ctx: Context, file=None) -> None:
    file = file or sys.stdout
    rows = [_check_cells(r) for res in results for r in res.rows]
    print(markdown_table(CHECK_HEADERS, rows), file=file)
    if ctx.table3:
        print("\n" + table3_markdown(ctx.table3), file=file)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _views(text: str) -> tuple[int, ...]:
    try:
        views = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise BenchError(f"--views must be comma-separated integers, got {text!r}") from None
    if not views or any(not 1 <= v <= 24 for v in views):
        raise BenchError(f"--views must list view counts between 1 and 24, got {text!r}")
    return views


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m geolrm_bench.gpu_check",
        description="Prove the GPU path in one guarded run: golden outputs on CUDA, our rasterizer vs "
                    "the CPU and gsplat, the paper's Table 3 time/memory sweep (fp32, bf16), a few "
                    "training steps. "
                    "Writes reports/gpu/<device>/summary.md|csv, table3.csv, config.json. Without CUDA: "
                    "prints 'no CUDA: ...' and exits 0.")
    ap.add_argument("--out", type=Path, default=None,
                    help="report folder (default reports/gpu/<device-name> under the current directory)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 5, 3 with --quick)")
    ap.add_argument("--views", type=str, default=None,
                    help="Table 3 input view counts, comma-separated (default 4,8,12,16,20; --quick: 4,20; "
                         "--quick on the CPU: 2)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per Table 3 cell (default 5, 2 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="fewer views and repeats; on the CPU also the tiny preset at 56 px and no "
                         "golden step")
    ap.add_argument("--time-budget", type=float, default=480.0,
                    help="seconds for the whole run; optional steps (table3, training, gsplat) that would "
                         "overrun it are skipped with a reason (default 480)")
    ap.add_argument("--device", type=str, default=None,
                    help="cuda (default) or cpu: run every step on the CPU as a stand-in (tests)")
    ap.add_argument("--preset", type=str, default=None,
                    help="Table 3 model preset (default paper; tiny with --quick on the CPU)")
    ap.add_argument("--skip", type=str, default="",
                    help=f"comma-separated steps to skip ({', '.join(s.name for s in STEPS)})")
    return ap.parse_args(argv)


def make_plan(args: argparse.Namespace, device: torch.device) -> Plan:
    """Sizes for this run. CPU + --quick: tiny preset at 56 px, small raster scene, no golden."""
    cpu_quick = device.type == "cpu" and args.quick
    if args.views:
        views = _views(args.views)
    else:
        views = (2,) if cpu_quick else ((4, 20) if args.quick else tuple(SWEEP_NUM_INPUT_VIEWS))
    preset = args.preset or ("tiny" if cpu_quick else "paper")
    cfg = get_config(preset)
    skip = tuple(s for s in args.skip.replace(" ", "").split(",") if s)
    unknown = sorted(set(skip) - {s.name for s in STEPS})
    if unknown:
        raise BenchError(f"--skip: unknown step(s) {unknown}; steps are {[s.name for s in STEPS]}")
    for name, v in (("--steps", args.steps), ("--repeats", args.repeats)):
        if v is not None and v < 1:
            raise BenchError(f"{name} must be at least 1, got {v}")
    return Plan(
        device=str(device), quick=args.quick, views=views,
        repeats=args.repeats or (1 if cpu_quick else (2 if args.quick else 5)),
        warmup=1, bench_preset=preset,
        bench_input_size=56 if cpu_quick and preset == "tiny" else cfg.input_size,
        dtypes=("fp32", "bf16"),
        raster_gaussians=300 if cpu_quick else (4_000 if device.type == "cpu" else 65_536),
        raster_size=32 if cpu_quick else (128 if device.type == "cpu" else 512),
        raster_views=1 if cpu_quick else 2,
        train_steps=args.steps or (3 if args.quick else 5),
        train_render_size=16 if cpu_quick else (32 if device.type == "cpu" else 64),
        train_inputs=2 if cpu_quick else 4,
        train_gaussians=300 if cpu_quick else (1000 if device.type == "cpu" else 4000),
        golden=not cpu_quick, skip=skip,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        device = torch.device(args.device or "cuda")
        if device.type not in ("cuda", "cpu"):
            raise BenchError(f"--device must be cuda or cpu, got {args.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            print(f"no CUDA: torch {torch.__version__} ({build}) sees no CUDA device; nothing to check "
                  "here (--device cpu runs the CPU stand-in)")
            return 0
        if not args.time_budget > 0:
            raise BenchError(f"--time-budget must be > 0 seconds, got {args.time_budget}")
        plan = make_plan(args, device)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ctx = Context(plan=plan, budget=Budget(args.time_budget), log=lambda s: print(s, flush=True))
    env = environment(device)
    print(f"gpu_check on {env['device_name']} ({device}), torch {torch.__version__}, "
          f"budget {args.time_budget:.0f} s", flush=True)
    np.random.seed(0)
    results = run_steps(STEPS, ctx)
    code = exit_code(results)
    out = args.out or Path("reports") / "gpu" / slug(env["device_name"])
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print()
    print_table(results, ctx)
    try:
        paths = write_report(out, results, ctx, env, code, options)
    except (BenchError, OSError) as e:
        print(f"error: cannot write the report: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"\n{'PASS' if code == 0 else 'FAIL'}: wrote {', '.join(str(p) for p in paths)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
