"""The training loop of one worker, engine-agnostic: Ray Train (pipelines/train.py) or one process.

``train_worker(cfg, hooks)`` builds the model and data, resumes from ``hooks.latest_checkpoint()``,
runs updates with :func:`geolrm_bench.training.loop.train_step`, writes ``metrics.csv`` and
``curves.png`` (rank 0), validates on held-out objects, checkpoints every ``checkpoint_every``
updates through ``hooks.save_checkpoint`` and finally writes the model with ``save_pretrained``
into the run folder (``config.json`` + ``model.safetensors``: loadable by ``eval``/``reconstruct
--checkpoint RUN``). A non-finite loss stops the run without stepping; the last good checkpoint
stays the newest one and ``status.json`` says what happened.

Run folder::

    RUN/train_config.json   the TrainConfig
    RUN/metrics.csv         one row per update (each loss term, lr, grad norm, times, samples/s)
    RUN/curves.png          loss / lr / validation curves, redrawn every ``plot_every`` updates
    RUN/validation.csv      one row per validation (PSNR or IoU per held-out object and mean)
    RUN/status.json         running / done / nonfinite, last step, last checkpoint
    RUN/checkpoints/...     (local loop) or RUN/ray/checkpoint_* (Ray Train)
    RUN/config.json + RUN/model.safetensors   the final model
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geolrm_bench.errors import BenchError
from geolrm_bench.io import atomic_dir, write_json_atomic
from geolrm_bench.training import loop
from geolrm_bench.training.config import TrainConfig
from geolrm_bench.training.data import ShardedOrder, TrainDataset, find_objects
from geolrm_bench.training.views import VAL_INPUT_VIEWS, VAL_TARGET_VIEWS

STATE_FILE = "state.pt"
COMPLETE_MARK = "COMPLETE"  # written last into a checkpoint folder


class Hooks:
    """What the engine provides to :func:`train_worker` (the local version: one process, files)."""

    rank: int = 0
    world_size: int = 1

    def __init__(self, run_dir: Path, device: str = "cpu"):
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    def load_latest(self) -> tuple[dict | None, str | None]:
        """The newest complete checkpoint's training state and where it came from, or (None, None)."""
        return read_state(newest_complete(self.run_dir / "checkpoints"))

    def save_checkpoint(self, step: int, write, metrics: dict) -> Path | None:
        """``write(folder)`` fills a checkpoint folder (rank 0 only); keep the newest ``keep``."""
        final = self.run_dir / "checkpoints" / f"step_{step:08d}"
        with atomic_dir(final) as tmp:
            write(tmp)
        for old in sorted((self.run_dir / "checkpoints").glob("step_*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    keep: int = 2


def newest_complete(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if (p / COMPLETE_MARK).is_file() and (p / STATE_FILE).is_file()]
    if not done:
        return None
    return max(done, key=lambda p: int((p / COMPLETE_MARK).read_text().strip() or 0))


def read_state(folder: Path | None) -> tuple[dict | None, str | None]:
    """``state.pt`` of a checkpoint folder (None when ``folder`` is None)."""
    if folder is None:
        return None, None
    # weights_only=False: the state holds numpy/python RNG states; it is our own file
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False), str(folder)


def write_checkpoint(folder: Path, sm: loop.StepModules, step: int) -> None:
    """``state.pt`` (full training state) + the model via ``save_pretrained`` + the COMPLETE mark."""
    torch.save(loop.training_state(sm, step), folder / STATE_FILE)
    export_model(sm.model, folder)
    (folder / COMPLETE_MARK).write_text(f"{step}\n")


def export_model(model, run_dir: Path) -> None:
    """``save_pretrained`` into ``run_dir`` itself (``config.json`` + ``model.safetensors``), without
    replacing the folder's other files: written into a staging folder, then moved in file by file."""
    from geolrm_bench.model.checkpoint import save_pretrained

    run_dir = Path(run_dir)
    stage = run_dir / ".export"
    save_pretrained(model, stage)
    for name in ("model.safetensors", "config.json"):  # weights first: config.json marks it complete
        os.replace(stage / name, run_dir / name)
    shutil.rmtree(stage, ignore_errors=True)


@dataclass
class _Split:
    train: list
    val: list


def split_objects(cfg: TrainConfig) -> _Split:
    objs, _ = find_objects(cfg.data)
    if cfg.val_every and cfg.val_objects and len(objs) > cfg.val_objects:
        return _Split(objs[:-cfg.val_objects], objs[-cfg.val_objects:])
    return _Split(objs, objs[: cfg.val_objects] if cfg.val_every else [])  # too few: validate on train


METRIC_COLUMNS = {
    "proposal": ["step", "epoch", "loss", "bce", "geo", "iou", "inputs", "lr", "grad_norm", "step_time_s",
                 "data_time_s", "samples_per_s", "finite"],
    "reconstruction": ["step", "epoch", "loss", "mse", "lpips", "mask", "depth", "tv", "psnr", "tokens",
                       "empty_proposals", "inputs", "lr", "grad_norm", "step_time_s", "data_time_s",
                       "samples_per_s", "finite"],
}


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows after ``last_step`` (written after the checkpoint a resumed run starts from)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= last_step]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(keep)
    os.replace(tmp, path)


def _append_csv(path: Path, columns: list[str], row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        f.flush()


def plot_curves(run_dir: Path) -> Path | None:
    """Redraw ``curves.png`` from metrics.csv (+ validation.csv), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    m = run_dir / "metrics.csv"
    if not m.is_file():
        return None
    df = pd.read_csv(m)
    if df.empty:
        return None
    terms = [c for c in df.columns if c in ("loss", "bce", "geo", "mse", "lpips", "mask", "depth", "tv")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for c in terms:
        axes[0].plot(df["step"], df[c], label=c, lw=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("update")
    axes[0].set_title("training losses")
    axes[0].legend(fontsize=7)
    axes[1].plot(df["step"], df["lr"])
    axes[1].set_title("learning rate")
    axes[1].set_xlabel("update")
    v = run_dir / "validation.csv"
    if v.is_file():
        vdf = pd.read_csv(v)
        if not vdf.empty:
            axes[2].plot(vdf["step"], vdf["mean"], marker="o")
            axes[2].set_title(f"validation {vdf['metric'].iloc[0]} (held-out mean)")
            axes[2].set_xlabel("update")
    fig.tight_layout()
    out = run_dir / "curves.png"
    tmp = run_dir / ".curves.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, out)
    return out


@torch.no_grad()
def validate(sm: loop.StepModules, val: TrainDataset) -> dict[str, float]:
    """Fixed views (4 orbit inputs, 4 other ring targets, white): PSNR (stage 2) or IoU (stage 1)."""
    model, cfg = sm.model, sm.cfg
    model.eval()
    out = {}
    for i, obj in enumerate(val.objects):
        views = list(VAL_INPUT_VIEWS) + list(VAL_TARGET_VIEWS)
        s = val.load(i, views, occupancy=cfg.stage == "proposal" or cfg.tokens == "gt")
        dev = sm.device
        imgs = s["images"][:4][None].to(dev)
        c2w, K = s["c2w"][None].to(dev), s["K"][None].to(dev)
        if cfg.stage == "proposal":
            logits = model.propose(imgs, c2w[:, :4], K[:, :4])
            pred, gt = logits[0] > 0, s["occupancy"].to(dev) > 0.5
            out[obj.name] = float((pred & gt).sum() / (pred | gt).sum().clamp(min=1))
        else:
            images = model.prepare_images(imgs)
            if cfg.tokens == "gt":
                logits = (s["occupancy"][None].to(dev) * 2 - 1)
            else:
                logits = model.serializer(images, c2w[:, :4], K[:, :4]).float()
            anchors, _ = loop.select_anchors(model, logits, loop.train_token_cap(cfg, model), cfg.min_tokens,
                                             torch.tensor([cfg.seed]))
            g = model.reconstruct(images, c2w[:, :4], K[:, :4], anchors=anchors, resize=False)
            rs = val.render_size
            r = model.render(g, c2w[:, 4:], K[:, 4:], rs, rs)
            mse = ((r["rgb"][0] - s["target_rgb_white"][4:].to(dev)) ** 2).mean().clamp(min=1e-10)
            out[obj.name] = float(-10 * torch.log10(mse))
    loop.set_modes(sm)
    return out


def train_worker(cfg: TrainConfig, hooks: Hooks) -> dict:
    """Run (or resume) one stage on this worker. Returns ``{"status", "step", ...}``."""
    rank, world = hooks.rank, hooks.world_size
    run_dir = Path(cfg.out)
    if cfg.threads_per_worker:
        torch.set_num_threads(int(cfg.threads_per_worker))
    split = split_objects(cfg)
    model = loop.build_model(cfg)
    mc = model.cfg
    render_size = cfg.render_size or mc.input_size
    train_ds = TrainDataset(cfg.data, mc.grid_res, mc.input_size, render_size, objects=split.train)
    val_ds = TrainDataset(cfg.data, mc.grid_res, mc.input_size, render_size, objects=split.val)
    sm = loop.setup(model, cfg, hooks.device, ddp=hooks.ddp)
    order = ShardedOrder(len(train_ds), cfg.seed, rank, world, cfg.batch_size, cfg.accumulate)
    start = 0
    state, last_ckpt = hooks.load_latest()
    if state is not None:
        start = loop.load_training_state(sm, state)
        del state
    metrics_path, val_path = run_dir / "metrics.csv", run_dir / "validation.csv"
    columns = METRIC_COLUMNS[cfg.stage]
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "train_config.json", cfg.to_dict())
        _truncate_csv(metrics_path, start)
        _truncate_csv(val_path, start)
        write_json_atomic(run_dir / "status.json", {"status": "running", "step": start,
                                                    "last_checkpoint": last_ckpt})
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.stage}", unit="step", dynamic_ncols=True)
    status = "done"
    step = start

    def load(s: int) -> list[loop.Batch]:  # a pure function of the update: safe to run ahead
        return [loop.make_batch(train_ds, order.items(s, m), loop.step_rng(cfg.seed, s, rank, m), cfg)
                for m in range(cfg.accumulate)]

    # the next update's micro-batches load in a thread while this one trains (data_time_s = wait)
    pool = ThreadPoolExecutor(max_workers=1) if cfg.prefetch else None
    pending = pool.submit(load, step) if pool is not None and step < cfg.steps else None
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            mbs = pending.result() if pending is not None else load(step)
            pending = pool.submit(load, step + 1) if pool is not None and step + 1 < cfg.steps else None
            t_data = time.perf_counter() - t0
            met = loop.train_step(sm, mbs)
            dt = time.perf_counter() - t0
            samples = cfg.batch_size * cfg.accumulate * world
            row = {**met, "step": step + 1, "epoch": order.epoch_of(step + 1), "step_time_s": dt,
                   "data_time_s": t_data, "samples_per_s": samples / dt}
            if not met["finite"]:
                status = "nonfinite"
                if rank == 0:
                    _append_csv(metrics_path, columns, row)
                break
            step += 1
            if rank == 0:
                _append_csv(metrics_path, columns, row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{met['loss']:.4g}", lr=f"{met['lr']:.2e}")
            if cfg.val_every and val_ds.objects and step % cfg.val_every == 0 and rank == 0:
                scores = validate(sm, val_ds)
                vals = list(scores.values())
                _append_csv(val_path, ["step", "metric", "mean", "objects"],
                            {"step": step, "metric": "iou" if cfg.stage == "proposal" else "psnr",
                             "mean": float(np.mean(vals)),
                             "objects": ";".join(f"{k}={v:.4g}" for k, v in scores.items())})
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                saved = hooks.save_checkpoint(step, lambda d, s=step: write_checkpoint(d, sm, s),
                                              {"step": step, "loss": met["loss"]})
                if saved is not None:
                    last_ckpt = str(saved)
                if rank == 0:
                    write_json_atomic(run_dir / "status.json", {"status": "running", "step": step,
                                                                "last_checkpoint": last_ckpt})
            if rank == 0 and (step % cfg.plot_every == 0 or step == cfg.steps):
                plot_curves(run_dir)
            if cfg.crash_at_step is not None and step == cfg.crash_at_step and rank == 0:
                marker = run_dir / ".crashed"
                if not marker.exists():
                    marker.write_text(f"{step}\n")
                    os._exit(137)  # tests: a kill -9 right here (no cleanup, no final save)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    result = {"status": status, "step": step, "last_checkpoint": last_ckpt, "run": str(run_dir)}
    if rank == 0:
        if status == "done":
            export_model(sm.model, run_dir)
            plot_curves(run_dir)
        else:
            result["reason"] = (f"non-finite loss or gradient at update {step + 1}; stopped, the last good "
                                f"checkpoint is {last_ckpt}")
        write_json_atomic(run_dir / "status.json", result)
    return result


def train_local(cfg: TrainConfig, device: str = "cpu") -> dict:
    """The plain single-process loop (no Ray): one worker, checkpoints under RUN/checkpoints."""
    hooks = Hooks(cfg.out, device)
    hooks.keep = cfg.keep_checkpoints
    out = train_worker(cfg, hooks)
    if out["status"] != "done":
        raise BenchError(out.get("reason", out["status"]), cfg.out)
    return out
