"""Training (issue 11): loss terms and schedule against hand computations, view sampling rules,
training data checks, DDP equivalence, kill-and-resume, and short runs that lower the loss.

Objects: a sphere and a box rendered at 64 px by the occupancy-gt pipeline (local, no Ray);
the model: the ``tiny`` preset at 56 px input, 32 px supervision.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

from conftest import needs_renderer  # noqa: E402

from geolrm_bench.errors import BenchError  # noqa: E402
from geolrm_bench.training import loop, losses, views  # noqa: E402
from geolrm_bench.training.config import TrainConfig  # noqa: E402
from geolrm_bench.training.data import TrainDataset, TrainDataWarning, find_objects, occupancy_grid  # noqa: E402
from geolrm_bench.training.schedule import lr_factor, make_scheduler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMALL = {"input_size": 56}  # model override: tiny preset at 56 px (4x4 DINO patches)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- losses
def test_bce_mean_against_hand_computation():
    x = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]]]])  # [1, 1, 2, 2]
    y = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    want = 0.0
    for xi, yi in zip(x.flatten().tolist(), y.flatten().tolist()):
        p = _sigmoid(xi)
        want += -(yi * math.log(p) + (1 - yi) * math.log(1 - p))
    assert losses.occupancy_bce(x, y).item() == pytest.approx(want / 4, rel=1e-6)


def test_geo_scal_loss_is_the_monoscene_formula():
    """MonoScene's geo_scal_loss (binary case), written out with loops in float64 on a 2x2x2x2 tensor."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 2, 2, 2, generator=g) * 2
    target = (torch.rand(2, 2, 2, 2, generator=g) > 0.5).float()
    target[0, 0, 0, 0], target[0, 0, 0, 1] = 1.0, 0.0  # both classes present
    ps = [_sigmoid(v) for v in logits.flatten().tolist()]
    gs = target.flatten().tolist()
    inter = sum(p * t for p, t in zip(ps, gs))
    precision = inter / sum(ps)
    recall = inter / sum(gs)
    spec = sum((1 - p) * (1 - t) for p, t in zip(ps, gs)) / sum(1 - t for t in gs)
    want = -math.log(precision) - math.log(recall) - math.log(spec)
    got = losses.geo_scal_loss(logits, target)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # a perfect, confident prediction has loss ~0
    assert losses.geo_scal_loss(target * 40 - 20, target).item() < 1e-6


def test_image_mask_depth_tv_terms_against_hand_computations():
    pred = torch.full((1, 1, 3, 2, 2), 0.5)
    target = torch.full((1, 1, 3, 2, 2), 0.25)
    assert losses.image_mse(pred, target).item() == pytest.approx(0.25)  # ((0) - (-0.5))^2 on [-1, 1]
    a_pred = torch.tensor([0.0, 1.0, 0.5, 0.5]).view(1, 1, 1, 2, 2)
    a_gt = torch.tensor([1.0, 1.0, 0.0, 0.5]).view(1, 1, 1, 2, 2)
    assert losses.mask_mse(a_pred, a_gt).item() == pytest.approx((1 + 0 + 0.25 + 0) / 4)

    # depth 1 x 3 image: D_pred = [1, 2, 4], D_gt = [1, 1, 0]; rgb x-differences 0.3 / 0.6 (all channels)
    dp = torch.tensor([1.0, 2.0, 4.0]).view(1, 1, 1, 1, 3)
    dg = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 1, 3)
    rgb = torch.tensor([0.1, 0.4, 1.0]).view(1, 1, 1, 1, 3).expand(1, 1, 3, 1, 3)
    valid = torch.tensor([True, True, False]).view(1, 1, 1, 1, 3)
    lx = [math.exp(-0.3) * math.log(1 + 0), math.exp(-0.6) * math.log(1 + 1)]  # pixels 0, 1 (both valid)
    want = sum(lx) / 2  # no y pairs (H = 1): 0
    assert losses.edge_aware_log_l1(dp, dg, rgb, valid).item() == pytest.approx(want, rel=1e-6)
    valid2 = torch.tensor([False, True, True]).view(1, 1, 1, 1, 3)  # only the pair starting at pixel 1
    assert losses.edge_aware_log_l1(dp, dg, rgb, valid2).item() == pytest.approx(lx[1], rel=1e-6)

    d = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]).view(1, 1, 1, 2, 3)
    tv_x = (1 + 2 + 0 + 0) / 4
    tv_y = (2 + 1 + 1) / 3
    assert losses.depth_tv(d).item() == pytest.approx(tv_x + tv_y)


def test_weighted_total_uses_the_official_weights():
    cfg = TrainConfig(stage="reconstruction")
    w = cfg.loss_weights()
    assert (w["mse"], w["lpips"], w["mask"], w["depth"], w["tv"]) == (1.0, 2.0, 1.0, 0.2, 0.05)
    terms = {k: torch.tensor(float(i + 1)) for i, k in enumerate(losses.STAGE2_TERMS)}
    want = 1 * 1 + 2 * 2 + 1 * 3 + 0.2 * 4 + 0.05 * 5  # mse, lpips, mask, depth, tv
    assert losses.weighted_total(terms, w).item() == pytest.approx(want)


def test_lpips_loss_is_differentiable_and_equals_the_metric():
    from geolrm_bench.metrics.lpips import build_lpips_network, lpips

    net = build_lpips_network("vgg")
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(1, 2, 3, 32, 32, generator=g).requires_grad_(True)
    target = torch.rand(1, 2, 3, 32, 32, generator=g)
    val = losses.lpips_loss(net, pred, target)
    want = lpips(pred.detach()[0], target[0], net="vgg").mean().item()
    assert val.item() == pytest.approx(want, rel=1e-5)
    val.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- schedule
def test_schedule_factor_against_hand_values():
    eta = 0.001
    assert lr_factor(0, 500, 50_000) == pytest.approx(eta)
    assert lr_factor(250, 500, 50_000) == pytest.approx(eta + (1 - eta) / 2)  # cos(pi/2) = 0
    assert lr_factor(500, 500, 50_000) == pytest.approx(1.0)
    assert lr_factor(25_250, 500, 50_000) == pytest.approx(eta + (1 - eta) / 2)  # half-way down
    assert lr_factor(50_000, 500, 50_000) == pytest.approx(eta)
    # TRAINING.md 1.1 (official stage 2 in micro-steps, W 12k, T 100k): not clamped past T
    assert lr_factor(105_000, 12_000, 100_000) == pytest.approx(0.009, abs=5e-4)
    assert lr_factor(150_000, 12_000, 100_000) == pytest.approx(0.61, abs=5e-3)


def test_scheduler_steps_once_per_optimizer_update():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-4)
    sched = make_scheduler(opt, warmup=4, total=10)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [1e-4 * (0.001 + (1 - math.cos(math.pi * s / 4)) * 0.999 / 2) for s in range(4)]
    want += [1e-4 * (0.001 + (1 + math.cos(math.pi * (s - 4) / 6)) * 0.999 / 2) for s in (4, 5)]
    np.testing.assert_allclose(seen, want, rtol=1e-9)


def test_stage_defaults_are_the_official_recipe():
    s1, s2 = TrainConfig(stage="proposal"), TrainConfig(stage="reconstruction")
    assert (s1.lr, s1.batch_size, s1.accumulate, s1.warmup, s1.total_steps, s1.grad_clip) == \
        (2e-4, 2, 1, 500, 50_000, 10.0)
    assert (s2.lr, s2.batch_size, s2.accumulate, s2.warmup, s2.total_steps, s2.grad_clip) == \
        (1e-4, 1, 8, 1_500, 12_500, 4.0)
    assert s1.betas == (0.9, 0.95) and s1.weight_decay == 0.05 and s1.seed == 42 and s1.precision == "fp32"
    with pytest.raises(BenchError, match="unknown fields"):
        TrainConfig.from_dict({"stage": "proposal", "learning_rate": 1})
    with pytest.raises(BenchError, match="stage"):
        TrainConfig(stage="both")


# ----------------------------------------------------------------------------- views
def test_view_sampling_rules():
    rng = np.random.default_rng(0)
    counts = {"proposal": set(), "reconstruction": set()}
    for _ in range(400):
        v = views.sample_object_views(rng)
        assert len(v) == 8 and len(set(v)) == 8 and all(0 <= x < 40 for x in v)
        orth = v[:4]
        assert all(0 <= x < 24 for x in orth)
        assert [(orth[k] - orth[0]) % 24 for k in range(4)] == [0, 6, 12, 18]  # 90 degrees apart
        for stage in counts:
            d = views.sample_input_positions(rng, stage)
            assert 1 <= d.n_orth <= 4 and 0 <= d.n_rand <= views.MAX_RAND_INPUTS[stage]
            assert list(d.positions[:d.n_orth]) == sorted(d.positions[:d.n_orth])
            assert all(p < 4 for p in d.positions[:d.n_orth]) and all(p >= 4 for p in d.positions[d.n_orth:])
            counts[stage].add((d.n_orth, d.n_rand))
    assert counts["reconstruction"] == {(o, r) for o in range(1, 5) for r in range(4)}
    assert counts["proposal"] == {(o, r) for o in range(1, 5) for r in range(5)}
    offsets = {views.sample_object_views(rng)[0] for _ in range(400)}
    assert offsets == set(range(24))
    for _ in range(20):
        d = views.sample_input_positions(rng, "reconstruction", fixed_input_views=6)
        assert (d.n_orth, d.n_rand, len(d.positions)) == (4, 2, 6)
    bg = views.sample_background(rng)
    assert bg.shape == (3,) and np.all((bg >= 0) & (bg < 1))


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def train_data(occupancy_data) -> Path:
    """occupancy-gt output for a sphere and a box (64 px views, R_gt = 128): conftest's session data."""
    return occupancy_data


def test_occupancy_grid_downsamples_by_floor():
    idx = np.array([[0, 0, 0], [3, 4, 127], [127, 126, 5]], dtype=np.uint8)
    grid = occupancy_grid(idx, 128, 32)
    assert grid.sum() == 3
    for x, y, z in [(0, 0, 0), (0, 1, 31), (31, 31, 1)]:
        assert grid[x, y, z] == 1


@needs_renderer
def test_bad_objects_are_skipped_with_a_warning_and_empty_data_is_an_error(train_data, tmp_path):
    from geolrm_bench import gobjaverse

    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    for name in ("nopts", "tenviews", "nandepth"):
        shutil.copytree(data / "renders" / "sphere", data / "renders" / name)
        shutil.copytree(data / "occupancy" / "sphere", data / "occupancy" / name)
    (data / "occupancy" / "nopts" / "pts.npy").unlink()
    for i in range(10, 40):
        shutil.rmtree(data / "renders" / "tenviews" / gobjaverse.view_name(i))
    exr = gobjaverse.view_paths(data / "renders" / "nandepth", 7)["exr"]
    normals, depth = gobjaverse.read_nd_exr(exr)
    depth[3, 3] = np.nan
    gobjaverse.write_nd_exr(exr, normals, depth)
    with pytest.warns(TrainDataWarning) as rec:
        good, skipped = find_objects(data)
    assert [o.name for o in good] == ["box", "sphere"]
    reasons = dict(skipped)
    assert "pts.npy" in reasons["nopts"] and "10 of 40" in reasons["tenviews"]
    assert "NaN" in reasons["nandepth"]
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 3 and all("\n" not in m for m in msgs)
    assert any("'nopts'" in m for m in msgs) and any("'nandepth'" in m for m in msgs)

    empty = tmp_path / "empty"
    (empty / "renders").mkdir(parents=True)
    with pytest.raises(BenchError) as err:
        find_objects(empty)
    assert str(empty) in str(err.value) and "pts.npy" in str(err.value) and "\n" not in str(err.value)
    only_bad = tmp_path / "bad"
    shutil.copytree(data / "renders" / "tenviews", only_bad / "renders" / "tenviews")
    shutil.copytree(data / "occupancy" / "tenviews", only_bad / "occupancy" / "tenviews")
    with pytest.warns(TrainDataWarning), pytest.raises(BenchError, match="10 of 40"):
        find_objects(only_bad)


@needs_renderer
def test_make_batch_composites_targets_on_one_background(train_data):
    ds = TrainDataset(train_data, grid_res=32, image_size=56, render_size=32)
    cfg = TrainConfig(stage="reconstruction", data=train_data, out="unused")
    b = loop.make_batch(ds, [0, 1], np.random.default_rng(1), cfg)
    assert b.images.shape[:2] == b.c2w_in.shape[:2] and b.images.shape[-1] == 56
    assert b.target_rgb.shape == (2, 8, 3, 32, 32) and b.occupancy is None
    assert torch.equal(b.background[0], b.background[1])
    bg = b.background[0].view(3, 1, 1)
    empty = b.target_alpha[0, 0, 0] == 0
    assert empty.any()
    torch.testing.assert_close(b.target_rgb[0, 0][:, empty], bg.expand(3, 32, 32)[:, empty])
    s1 = loop.make_batch(ds, [1], np.random.default_rng(1), TrainConfig(stage="proposal", data=train_data))
    assert s1.occupancy.shape == (1, 32, 32, 32) and 0 < s1.occupancy.sum() < 32 ** 3


# ----------------------------------------------------------------------------- DDP equivalence
def _fresh_setup(cfg: TrainConfig, ddp: bool = False) -> loop.StepModules:
    torch.manual_seed(0)
    model = loop.build_model(cfg)
    return loop.setup(model, cfg, "cpu", ddp=ddp)


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, batch_file: str, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrainConfig.from_dict(cfg_dict)
        parts = torch.load(batch_file, weights_only=False)[rank]
        sm = _fresh_setup(cfg, ddp=True)
        met = loop.train_step(sm, parts)
        if rank == 0:
            torch.save({"params": {k: v.detach().clone() for k, v in sm.trained.named_parameters()},
                        "grads": {k: v.grad.clone() for k, v in sm.trained.named_parameters()
                                  if v.grad is not None}, "metrics": met}, out_file)
    finally:
        dist.destroy_process_group()


def _run_ddp(tmp_path: Path, cfg: TrainConfig, per_rank: list[list[loop.Batch]]) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.save(per_rank, tmp_path / "batches.pt")
    args = (2, port, cfg.to_dict(), str(tmp_path / "batches.pt"), str(tmp_path / "r0.pt"))
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    return torch.load(tmp_path / "r0.pt", weights_only=False)


def _single(cfg: TrainConfig, micro: list[loop.Batch]) -> dict:
    sm = _fresh_setup(cfg)
    met = loop.train_step(sm, micro)
    return {"params": {k: v.detach().clone() for k, v in sm.trained.named_parameters()},
            "grads": {k: v.grad.clone() for k, v in sm.trained.named_parameters() if v.grad is not None},
            "metrics": met}


def _assert_same_step(a: dict, b: dict, lr: float) -> None:
    """Gradients allclose (rtol 1e-4, atol 1e-7); parameters after the AdamW step within 0.01 lr:
    Adam's first update is ``lr g / (|g| + 1e-8)``, so a gradient at float32 noise level (~1e-11,
    seen on some biases) moves its parameter by ~1e-3 lr in one run and not quite so in the other."""
    assert a["grads"].keys() == b["grads"].keys() and len(a["grads"]) > 10
    for k in a["grads"]:
        torch.testing.assert_close(a["grads"][k], b["grads"][k], rtol=1e-4, atol=1e-7, msg=k)
    moved = 0
    for k in a["params"]:
        torch.testing.assert_close(a["params"][k], b["params"][k], rtol=0, atol=0.01 * lr, msg=k)
        moved += int(k in a["grads"])
    assert moved > 10
    assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-5)


@needs_renderer
def test_ddp_two_workers_equal_one_worker_on_the_concatenated_batch(train_data, tmp_path, one_thread):
    """Stage 2, one update: 2 gloo DDP workers with one object each == 1 worker with both objects.

    Exact in maths only when every term is a mean over equal-sized parts, so this test sets
    ``freeze_bn`` (BatchNorm batch statistics are per worker, as in the official DDP without
    SyncBatchNorm) and ``w_depth = 0`` (the depth term averages over each worker's VALID pixels).
    Tolerance: gradients rtol 1e-4 / atol 1e-7, parameters rtol 1e-5 / atol 1e-7 (float32 sums
    in another order).
    """
    cfg = TrainConfig(stage="reconstruction", data=train_data, out=tmp_path / "run", model_overrides=SMALL,
                      render_size=32, batch_size=1, accumulate=1, lr=1e-4, warmup=0, total_steps=10,
                      train_max_tokens=64, freeze_bn=True, w_depth=0.0)
    ds = TrainDataset(train_data, 32, 56, 32)
    both = loop.make_batch(ds, [0, 1], np.random.default_rng(5), cfg)
    ddp = _run_ddp(tmp_path, cfg, [[both.select(slice(0, 1))], [both.select(slice(1, 2))]])
    one = _single(TrainConfig.from_dict({**cfg.to_dict(), "batch_size": 2}), [both])
    _assert_same_step(ddp, one, cfg.lr)


@needs_renderer
def test_ddp_two_workers_equal_one_worker_accumulating_their_batches(train_data, tmp_path, one_thread):
    """Stage 1 with the official losses and BatchNorm in train mode: 2 DDP workers (one micro-batch
    each) == 1 worker accumulating the same two micro-batches (the affinity loss and BatchNorm
    statistics are per micro-batch in both)."""
    cfg = TrainConfig(stage="proposal", data=train_data, out=tmp_path / "run", model_overrides=SMALL,
                      batch_size=1, accumulate=1, lr=1e-4, warmup=0, total_steps=10)
    ds = TrainDataset(train_data, 32, 56, 32)
    rng = np.random.default_rng(2)
    a = loop.make_batch(ds, [0], rng, cfg)
    b = loop.make_batch(ds, [1], rng, cfg)
    ddp = _run_ddp(tmp_path, cfg, [[a], [b]])
    one = _single(TrainConfig.from_dict({**cfg.to_dict(), "accumulate": 2}), [a, b])
    _assert_same_step(ddp, one, cfg.lr)


# ----------------------------------------------------------------------------- resume
def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "geolrm_bench.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600, **kw)


def _train_args(data: Path, out: Path, extra: list[str] = ()) -> list[str]:
    return ["train", "--stage", "proposal", "--data", str(data), "--out", str(out), "--preset", "tiny",
            "--local", "--quiet", "--steps", "4", "--batch-size", "1", "--lr", "1e-3",
            "--config", "model.input_size=56", "--config", "warmup=1", "--config", "total_steps=4",
            "--config", "checkpoint_every=2", "--config", "val_every=0", "--config", "threads_per_worker=1",
            *extra]


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


@needs_renderer
def test_kill_and_resume_gives_the_uninterrupted_parameters(train_data, tmp_path):
    """A run killed (os._exit(137), no cleanup) after update 3 and rerun resumes from the update-2
    checkpoint and ends with the same parameters as an uninterrupted run (tolerance: exact float32
    equality is expected on one CPU thread; asserted with atol 1e-6)."""
    full = _cli(_train_args(train_data, tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-2000:]
    crashed = _cli(_train_args(train_data, tmp_path / "killed", ["--config", "crash_at_step=3"]))
    assert crashed.returncode == 137
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["step_00000002"]
    resumed = _cli(_train_args(train_data, tmp_path / "killed", ["--config", "crash_at_step=3"]))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    steps = [int(r.split(",")[0]) for r in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]  # rows after the checkpoint were dropped and redone


# ----------------------------------------------------------------------------- short runs
def _losses(run: Path) -> list[float]:
    import pandas as pd

    return pd.read_csv(run / "metrics.csv")["loss"].tolist()


@pytest.mark.slow
@needs_renderer
def test_short_runs_lower_each_stage_loss_and_the_run_loads_in_eval(train_data, tmp_path, one_thread):
    from geolrm_bench.training.runner import train_local

    common = dict(data=train_data, preset="tiny", model_overrides=SMALL, steps=30, warmup=2, total_steps=30,
                  checkpoint_every=15, val_every=15, val_objects=1, progress=False)
    s1 = TrainConfig(stage="proposal", out=tmp_path / "s1", batch_size=2, lr=1e-3, **common)
    train_local(s1)
    l1 = _losses(tmp_path / "s1")
    assert np.mean(l1[-5:]) < 0.9 * np.mean(l1[:5]), l1
    s2 = TrainConfig(stage="reconstruction", out=tmp_path / "s2", proposal=str(tmp_path / "s1"), batch_size=1,
                     accumulate=1, lr=1e-3, render_size=32, train_max_tokens=256, **common)
    train_local(s2)
    l2 = _losses(tmp_path / "s2")
    assert np.mean(l2[-5:]) < 0.9 * np.mean(l2[:5]), l2
    assert (tmp_path / "s2" / "curves.png").is_file() and (tmp_path / "s2" / "validation.csv").is_file()

    # the run folder loads unchanged where eval / reconstruct load a checkpoint
    from geolrm_bench.commands.reconstruct import load_model
    from geolrm_bench.model.checkpoint import validate_checkpoint

    validate_checkpoint(str(tmp_path / "s2"))
    model, info = load_model(str(tmp_path / "s2"), None)
    assert info["kind"] == "pretrained" and model.cfg.input_size == 56
    sd = _weights(tmp_path / "s2")
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    out = _cli(["reconstruct", str(train_data / "renders" / "sphere"), "--checkpoint", str(tmp_path / "s2"),
                "--input-views", "0,6,12,18", "--resolution", "32", "--render-views", "3",
                "--out", str(tmp_path / "rec"), "--device", "cpu"])
    assert out.returncode == 0, out.stderr[-2000:]


@needs_renderer
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(train_data, tmp_path, one_thread):
    """An absurd LR (1e25) blows the weights up after the first update: the run stops at the first
    non-finite loss without stepping, keeps the update-1 checkpoint and writes no final model."""
    import json

    from geolrm_bench.training.runner import train_local

    cfg = TrainConfig(stage="proposal", data=train_data, out=tmp_path / "nan", model_overrides=SMALL,
                      batch_size=1, steps=4, lr=1e25, warmup=0, total_steps=4, checkpoint_every=1,
                      val_every=0, progress=False)
    with pytest.raises(BenchError, match="non-finite") as err:
        train_local(cfg)
    assert "step_00000001" in str(err.value)
    status = json.loads((tmp_path / "nan" / "status.json").read_text())
    assert status["status"] == "nonfinite" and status["step"] == 1
    assert sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir()) == ["step_00000001"]
    assert not (tmp_path / "nan" / "model.safetensors").exists()
    rows = (tmp_path / "nan" / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[-1] == "0"  # the failing update is logged with finite = 0


@pytest.mark.slow
@needs_renderer
def test_ray_train_two_workers_survive_a_worker_crash(train_data, tmp_path):
    """Ray Train, 2 gloo workers: rank 0 dies (os._exit) after update 3; FailureConfig restarts the
    group from the update-2 checkpoint, the run finishes and its folder loads as a model."""
    out = _cli(["train", "--stage", "proposal", "--data", str(train_data), "--out", str(tmp_path / "ray"),
                "--preset", "tiny", "--num-workers", "2", "--quiet", "--steps", "4", "--batch-size", "1",
                "--config", "model.input_size=56", "--config", "warmup=1", "--config", "total_steps=4",
                "--config", "checkpoint_every=2", "--config", "val_every=0",
                "--config", "threads_per_worker=1", "--config", "crash_at_step=3"])
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "ray"
    assert (run / ".crashed").is_file()  # the crash did happen
    assert (run / "ray" / "checkpoint_00000004" / "state.pt").is_file()
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]
    from geolrm_bench.model.geolrm import GeoLRM

    assert GeoLRM.from_pretrained(run).cfg.input_size == 56


def test_init_and_proposal_load_our_runs_and_refuse_mismatched_shapes(tmp_path):
    from geolrm_bench.model.config import get_config
    from geolrm_bench.model.geolrm import GeoLRM
    from geolrm_bench.training.config import apply_overrides

    torch.manual_seed(7)
    src = GeoLRM(get_config("tiny", input_size=56))
    src.save_pretrained(tmp_path / "run")
    cfg = TrainConfig(stage="reconstruction", data=tmp_path, init=str(tmp_path / "run"))
    model = loop.build_model(cfg)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    fresh = TrainConfig(stage="reconstruction", data=tmp_path, model_overrides={"input_size": 56},
                        proposal=str(tmp_path / "run"))
    m2 = loop.build_model(fresh)
    for k, v in src.serializer.state_dict().items():
        assert torch.equal(m2.serializer.state_dict()[k], v), k
    assert not torch.equal(m2.lrm_generator.renderer.latent_decoder[0].weight,
                           src.lrm_generator.renderer.latent_decoder[0].weight)  # LRM not from the run
    other = TrainConfig(stage="reconstruction", data=tmp_path, preset="tiny",
                        model_overrides={"feat_dim": 24}, proposal=str(tmp_path / "run"))
    with pytest.raises(BenchError, match="does not fit"):
        loop.build_model(other)
    vals = apply_overrides({"stage": "proposal"}, ["warmup=3", "model.input_size=56", "tokens=gt",
                                                   "betas=[0.9, 0.99]"])
    assert vals == {"stage": "proposal", "warmup": 3, "model_overrides": {"input_size": 56}, "tokens": "gt",
                    "betas": [0.9, 0.99]}


@needs_renderer
def test_bf16_step_matches_fp32_loss_and_gt_tokens_use_the_occupancy(train_data, tmp_path, one_thread):
    ds = TrainDataset(train_data, 32, 56, 32)
    base = dict(data=train_data, out=tmp_path, model_overrides=SMALL, render_size=32, batch_size=1,
                accumulate=1, warmup=0, total_steps=5, train_max_tokens=64)
    got = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(stage="proposal", precision=precision, **base)
        sm = _fresh_setup(cfg)
        got[precision] = loop.train_step(sm, [loop.make_batch(ds, [0], np.random.default_rng(0), cfg)])
    assert got["bf16"]["finite"] == 1.0
    assert got["bf16"]["loss"] == pytest.approx(got["fp32"]["loss"], rel=0.05)  # bf16: ~3 significant digits
    cfg = TrainConfig(stage="reconstruction", tokens="gt", w_lpips=0.0, **base)
    sm = _fresh_setup(cfg)
    batch = loop.make_batch(ds, [1], np.random.default_rng(0), cfg)
    assert batch.occupancy is not None
    _, _, info = loop.forward_losses(sm, batch)
    assert info["tokens"] == min(64, int(batch.occupancy.sum()))  # GT voxels, capped
